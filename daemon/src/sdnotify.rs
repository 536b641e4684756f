//! systemd's readiness protocol (`sd_notify`), without libsystemd: one datagram
//! to the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). A no-op when the variable is unset.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `READY=1`) to `$NOTIFY_SOCKET`. Returns whether it was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET_ENV) {
        Some(socket) if !socket.is_empty() => {
            notify_to(&socket, state)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Sends `state` to the notify socket `socket`.
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract notify sockets need Linux",
            ));
        }
    } else {
        sock.send_to(state.as_bytes(), socket)?;
    }
    Ok(())
}

/// Logs instead of failing: readiness notification is best effort.
pub fn notify_logged(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "notified systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, error = %e, "cannot notify systemd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_a_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_a_datagram_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("gxd-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
