//! CancelRequest routing. Clients get Warden's own (process id, secret) pair; a cancel that presents it
//! is forwarded to the PostgreSQL backend the session runs on, with that backend's real key.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub process_id: i32,
    pub secret_key: i32,
    /// Woken by a cancel, for a statement Warden itself holds (waiting for review): PostgreSQL has
    /// nothing to cancel then.
    pub held: std::sync::Arc<tokio::sync::Notify>,
}

#[derive(Default)]
pub struct CancelRegistry {
    targets: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

impl CancelRegistry {
    /// Registers a session and returns the key pair to hand to its client.
    pub fn register(&self, target: CancelTarget) -> (i32, i32) {
        let mut map = self.targets.lock().expect("cancel registry lock poisoned");
        loop {
            let key = (rand::random::<i32>() & 0x7fff_ffff, rand::random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(key) {
                e.insert(target);
                return key;
            }
        }
    }

    pub fn remove(&self, key: (i32, i32)) {
        self.targets.lock().expect("cancel registry lock poisoned").remove(&key);
    }

    /// Forwards a cancel. Unknown keys are dropped silently, as PostgreSQL does, so keys cannot be probed.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) -> std::io::Result<bool> {
        let target = self
            .targets
            .lock()
            .expect("cancel registry lock poisoned")
            .get(&(process_id, secret_key))
            .cloned();
        let Some(t) = target else { return Ok(false) };
        t.held.notify_waiters();
        let mut stream = TcpStream::connect((t.host.as_str(), t.port)).await?;
        let mut buf = BytesMut::with_capacity(16);
        warden_wire::frontend::cancel_request(t.process_id, t.secret_key, &mut buf);
        stream.write_all(&buf).await?;
        stream.shutdown().await?;
        Ok(true)
    }
}
