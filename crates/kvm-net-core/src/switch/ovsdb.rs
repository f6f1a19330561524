//! A client of Open vSwitch's database server (RFC 7047: JSON-RPC over its
//! Unix socket), for the few requests kvm-net makes: `list_dbs` first (a
//! server that accepted the connection but does not answer is never sent a
//! transaction, which it would carry out whenever it woke up), then
//! `transact`. Every wait is bounded; the server's `echo` requests are
//! answered.

use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use serde_json::{json, Deserializer, Value};

use crate::error::Error;

/// The database Open vSwitch keeps its switches in.
pub const DATABASE: &str = "Open_vSwitch";

/// How long the server gets to answer any one request.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// What an OVSDB server refused, as RFC 7047 names it: callers decide by
/// its kind, not by its text.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// An operation of a transaction failed (`"error"` of its result:
    /// `constraint violation`, `referential integrity violation`, ...).
    #[error("OVSDB refused a transaction: {error}{}", details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Operation {
        /// The error's name.
        error: String,
        /// What the server said of it.
        details: Option<String>,
    },
    /// The request as a whole failed (`"error"` of the answer).
    #[error("OVSDB refused {method}: {error}")]
    Request {
        /// The method asked for.
        method: String,
        /// What the server answered.
        error: String,
    },
    /// The answer is not what RFC 7047 says it is.
    #[error("OVSDB answered {0}")]
    Malformed(String),
}

impl Refusal {
    /// Whether another client's change got in the way (a row of the same
    /// name inserted meanwhile): worth trying again.
    pub fn is_constraint_violation(&self) -> bool {
        matches!(self, Refusal::Operation { error, .. } if error == "constraint violation")
    }
}

/// A connection to one OVSDB server, which has answered once.
pub struct Ovsdb {
    stream: UnixStream,
    socket: PathBuf,
    next_id: u64,
    /// What came in past the last whole message.
    pending: Vec<u8>,
}

impl Ovsdb {
    /// Connects to the server at `socket` and makes sure it answers
    /// (`list_dbs`, which must name the Open_vSwitch database).
    pub fn connect(socket: &Path) -> Result<Self> {
        let stream = connect_within(socket, Instant::now() + ANSWER_WAIT)?;
        let mut ovsdb = Self { stream, socket: socket.to_owned(), next_id: 0, pending: Vec::new() };
        let databases = ovsdb.call("list_dbs", json!([]))?;
        if !databases.as_array().is_some_and(|names| names.iter().any(|n| n == DATABASE)) {
            return Err(anyhow!("the OVSDB server at {} has no {DATABASE} database ({databases})", socket.display()));
        }
        Ok(ovsdb)
    }

    /// The socket it is connected to, for messages.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and waits (bounded) for its answer: its `result`,
    /// or its `error` as an error.
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "method": method, "params": params, "id": id });
        self.write(&request)?;
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            let message = self.read_message(deadline)?;
            if message.get("method").and_then(Value::as_str) == Some("echo") {
                let reply = json!({ "result": message.get("params").cloned().unwrap_or(json!([])), "error": null, "id": message.get("id").cloned().unwrap_or(Value::Null) });
                self.write(&reply)?;
                continue;
            }
            if message.get("id") != Some(&json!(id)) {
                continue;
            }
            match message.get("error") {
                Some(Value::Null) | None => return Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                Some(error) => {
                    return Err(Refusal::Request { method: method.to_owned(), error: error.to_string() }.into())
                }
            }
        }
    }

    fn write(&mut self, message: &Value) -> Result<()> {
        let bytes = serde_json::to_vec(message).context("encoding an OVSDB request")?;
        self.stream.write_all(&bytes).with_context(|| format!("writing to OVSDB at {}", self.socket.display()))
    }

    /// The next whole JSON message, reading until `deadline`.
    fn read_message(&mut self, deadline: Instant) -> Result<Value> {
        use std::io::Read;
        loop {
            let mut stream = Deserializer::from_slice(&self.pending).into_iter::<Value>();
            match stream.next() {
                Some(Ok(value)) => {
                    let used = stream.byte_offset();
                    self.pending.drain(..used);
                    return Ok(value);
                }
                Some(Err(err)) if !err.is_eof() => {
                    return Err(anyhow!("OVSDB at {} sent garbage: {err}", self.socket.display()))
                }
                _ => {}
            }
            let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
            let Some(left) = left else { return Err(self.silent()) };
            self.stream.set_read_timeout(Some(left)).context("setting a read timeout")?;
            let mut buffer = [0u8; 16 * 1024];
            match self.stream.read(&mut buffer) {
                Ok(0) => return Err(anyhow!("OVSDB at {} closed the connection", self.socket.display())),
                Ok(n) => self.pending.extend_from_slice(&buffer[..n]),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(self.silent())
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("reading from OVSDB at {}", self.socket.display()))
                }
            }
        }
    }

    fn silent(&self) -> anyhow::Error {
        Error::OvsUnreachable {
            socket: self.socket.display().to_string(),
            why: format!(
                "ovsdb-server accepted the connection but did not answer within {} s (stopped or stuck?)",
                ANSWER_WAIT.as_secs()
            ),
        }
        .into()
    }

    /// Runs `operations` as one transaction on the Open_vSwitch database;
    /// the result of each, or the first error.
    pub fn transact(&mut self, operations: Vec<Value>) -> Result<Vec<Value>> {
        let count = operations.len();
        let mut params = vec![json!(DATABASE)];
        params.extend(operations);
        let results = self.call("transact", Value::Array(params))?;
        let results = results.as_array().cloned().unwrap_or_default();
        if let Some(error) = results.iter().find(|r| r.get("error").is_some_and(|e| !e.is_null())) {
            return Err(Refusal::Operation {
                error: error["error"].as_str().map_or_else(|| error["error"].to_string(), str::to_owned),
                details: error.get("details").and_then(Value::as_str).map(str::to_owned),
            }
            .into());
        }
        if results.len() < count {
            return Err(Refusal::Malformed(format!("{} of {count} operations", results.len())).into());
        }
        Ok(results)
    }
}

/// A connection to the server's socket, made by `deadline`. A server that
/// takes no connections from its queue (stopped) fills it, and a plain
/// connect would then wait for as long as it stays stopped: the socket is
/// non-blocking until connected, and a full queue is tried again.
fn connect_within(socket: &Path, deadline: Instant) -> Result<UnixStream> {
    use nix::sys::socket::{connect, socket as new_socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let unreachable =
        |why: String| anyhow::Error::new(Error::OvsUnreachable { socket: socket.display().to_string(), why });
    let address = UnixAddr::new(socket).map_err(|err| unreachable(err.to_string()))?;
    let fd = new_socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .context("making a Unix socket")?;
    loop {
        match connect(fd.as_raw_fd(), &address) {
            Ok(()) => break,
            Err(Errno::ENOENT) => return Err(unreachable("it is not there (ovsdb-server is not running)".to_owned())),
            Err(Errno::ECONNREFUSED) => {
                return Err(unreachable("nothing accepts connections on it (ovsdb-server is not running)".to_owned()))
            }
            Err(Errno::EAGAIN) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(Errno::EAGAIN) => {
                return Err(unreachable(format!(
                    "ovsdb-server took no connection from its full queue within {} s (stopped or stuck?)",
                    ANSWER_WAIT.as_secs()
                )))
            }
            Err(err) => return Err(unreachable(err.to_string())),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false).context("making the OVSDB connection blocking")?;
    Ok(stream)
}

/// `["uuid", ID]`.
pub fn uuid(id: &str) -> Value {
    json!(["uuid", id])
}

/// The rows a `select` returned.
pub fn rows(result: &Value) -> Vec<Value> {
    result.get("rows").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// A row's UUID (`["uuid", ID]`).
pub fn row_uuid(row: &Value) -> Option<String> {
    row.get("_uuid")?.get(1)?.as_str().map(str::to_owned)
}

/// The members of a set column: `["set", [...]]`, or one atom.
pub fn set_members(value: &Value) -> Vec<Value> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, members]) if tag == "set" => members.as_array().cloned().unwrap_or_default(),
        _ if value.is_null() => Vec::new(),
        _ => vec![value.clone()],
    }
}

/// The pairs of a map column: `["map", [[K, V], ...]]`.
pub fn map_pairs(value: &Value) -> Vec<(String, String)> {
    let Some([tag, pairs]) = value.as_array().map(Vec::as_slice) else { return Vec::new() };
    if tag != "map" {
        return Vec::new();
    }
    pairs
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|pair| Some((pair.get(0)?.as_str()?.to_owned(), pair.get(1)?.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// `["map", [[K, V], ...]]`.
pub fn map(pairs: &[(&str, &str)]) -> Value {
    json!(["map", pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_back_as_ovsdb_writes_them() {
        let one = json!(["uuid", "a"]);
        assert_eq!(set_members(&one), vec![one.clone()]);
        assert_eq!(set_members(&json!(["set", [["uuid", "a"], ["uuid", "b"]]])).len(), 2);
        assert!(set_members(&json!(["set", []])).is_empty());
        let external = map(&[("iface-id", "vm1"), ("kvm-net-network", "ovn")]);
        assert_eq!(
            map_pairs(&external),
            [("iface-id".to_owned(), "vm1".to_owned()), ("kvm-net-network".to_owned(), "ovn".to_owned())]
        );
        assert_eq!(row_uuid(&json!({"_uuid": ["uuid", "x"]})).as_deref(), Some("x"));
    }
}
