//! spb-gateway: a Sparkplug B 3.0 edge node for S7 and Logix PLCs, and the
//! `spb-uplink` Primary Host that persists what edges publish.
//!
//! The protocol core ([`sparkplug`]) is sans-IO: it never touches a socket, a
//! clock or a file. The binaries in `src/bin/` own all I/O and execute the
//! actions the core returns.

pub mod sparkplug;
