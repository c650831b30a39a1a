//! The server's sessions: one per image a client asks about, kept for follow-up questions
//! (evidence already read is reused), dropped after `ttl` idle or when `max` are held.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::orchestrator::Session;

/// One held session. The session itself is behind an async lock: one question at a time.
pub struct Entry {
    pub id: String,
    pub session: Arc<tokio::sync::Mutex<Session<'static>>>,
    last_used: Mutex<Instant>,
}

impl Entry {
    pub fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    fn idle(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
}

pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Entry>>>,
    max: usize,
    ttl: Duration,
}

impl Sessions {
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds `session` under `id` (from [`new_id`]). Expired sessions go first; when still
    /// full, the one idle longest that no request is using.
    pub fn insert(&self, id: String, session: Session<'static>) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            id,
            session: Arc::new(tokio::sync::Mutex::new(session)),
            last_used: Mutex::new(Instant::now()),
        });
        let mut map = self.lock();
        map.retain(|_, e| Arc::strong_count(e) > 1 || e.idle() < self.ttl);
        while map.len() >= self.max {
            let oldest = map
                .values()
                .filter(|e| Arc::strong_count(e) == 1)
                .max_by_key(|e| e.idle())
                .map(|e| e.id.clone());
            match oldest {
                Some(id) => {
                    map.remove(&id);
                }
                // Every session is in use: hold one more rather than break a running question.
                None => break,
            }
        }
        map.insert(entry.id.clone(), entry.clone());
        entry
    }

    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        let mut map = self.lock();
        let e = map.get(id)?.clone();
        if Arc::strong_count(&e) == 2 && e.idle() >= self.ttl {
            map.remove(id);
            return None;
        }
        e.touch();
        Some(e)
    }
}

/// 128 random bits from the kernel, hex: a session id another client cannot guess.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        // No /dev/urandom: still unique within this process, if guessable.
        use sha2::Digest;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed = format!(
            "{:?}{}{}",
            Instant::now(),
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        b.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..16]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_distinct_hex() {
        let a = super::new_id();
        let b = super::new_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
