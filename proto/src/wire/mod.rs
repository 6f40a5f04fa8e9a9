//! Wire formats of the control plane: the daemon protocol's connection
//! request and the `sockaddr_un` it carries. See `PROTOCOLS.md` §1 and §2.

mod request;
mod sockaddr;
pub mod stream;
pub mod vxlan;

pub use request::{
    Request, RequestError, RequestKind, MAX_REQUEST_LEN, REQUEST_HEADER_LEN, REQUEST_MAGIC,
    REQUEST_VERSION, UML_REQUEST_LEN,
};
pub use sockaddr::{AddrError, SockaddrKind, SockaddrUn, AF_UNIX, SOCKADDR_UN_LEN, SUN_PATH_LEN};
pub use stream::{
    encode_record, RecordDecoder, RecordError, RecordStats, MAX_RECORD_LEN, RECORD_HEADER_LEN,
};
pub use vxlan::{decode, encode_header, VxlanError, VXLAN_HEADER_LEN, VXLAN_PORT};
