//! Nanoseconds per frame of the forwarding core, with no I/O:
//! learned unicast, floods to 16 and 64 ports, and lookups in a table of
//! 100,000 learned MACs. Run with `cargo bench -p uml-switch-benches`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use uml_switch_proto::{FdbConfig, MacAddr, PortId, Switch, SwitchConfig, Timestamp, Verdict};

fn frame(dst: MacAddr, src: MacAddr) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn host(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([2, 0, b[0], b[1], b[2], b[3]])
}

fn switch_with_ports(ports: u32, fdb_size: usize) -> Switch {
    let mut sw = Switch::new(SwitchConfig {
        max_ports: ports,
        fdb: FdbConfig {
            max_entries: fdb_size,
            ..FdbConfig::default()
        },
        ..SwitchConfig::default()
    });
    for p in 0..ports {
        sw.add_port(PortId(p)).unwrap();
    }
    sw
}

fn learned_unicast(c: &mut Criterion) {
    let mut sw = switch_with_ports(2, 1024);
    let now = Timestamp::from_secs(1);
    sw.ingress(now, PortId(1), &frame(MacAddr::BROADCAST, host(2)));
    let f = frame(host(2), host(1));
    let mut group = c.benchmark_group("ingress");
    group.throughput(Throughput::Elements(1));
    group.bench_function("learned_unicast", |b| {
        b.iter(|| {
            let v = sw.ingress(now, PortId(0), black_box(&f));
            debug_assert_eq!(v, Verdict::Unicast(PortId(1)));
            v
        })
    });
    group.finish();
}

fn flood(c: &mut Criterion) {
    let mut group = c.benchmark_group("flood");
    group.throughput(Throughput::Elements(1));
    for ports in [16u32, 64] {
        let mut sw = switch_with_ports(ports, 1024);
        let now = Timestamp::from_secs(1);
        let f = frame(MacAddr::BROADCAST, host(1));
        group.bench_with_input(BenchmarkId::from_parameter(ports), &ports, |b, _| {
            b.iter(|| {
                let v = sw.ingress(now, PortId(0), black_box(&f));
                // Walk the targets as the data plane does.
                sw.flood_targets(PortId(0)).map(|p| p.0).sum::<u32>()
                    + matches!(v, Verdict::Flood) as u32
            })
        });
    }
    group.finish();
}

fn big_table(c: &mut Criterion) {
    const MACS: u32 = 100_000;
    let mut sw = switch_with_ports(16, 200_000);
    let now = Timestamp::from_secs(1);
    for n in 0..MACS {
        sw.ingress(
            now,
            PortId(n % 15 + 1),
            &frame(MacAddr::BROADCAST, host(n + 10)),
        );
    }
    let frames: Vec<[u8; 64]> = (0..1024u32)
        .map(|i| frame(host((i * 97) % MACS + 10), host(1)))
        .collect();
    let mut group = c.benchmark_group("fdb_100k");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("unicast_lookup", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            sw.ingress(now, PortId(0), black_box(&frames[i]))
        })
    });
    group.finish();
}

criterion_group!(benches, learned_unicast, flood, big_table);
criterion_main!(benches);
