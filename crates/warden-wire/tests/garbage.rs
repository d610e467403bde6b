//! The fuzz targets' decode loops on stable Rust: pseudo-random bytes, and valid messages with bytes
//! flipped, truncated or lengths lied about. Passing means: no panic, every call returned.

use bytes::{BufMut, BytesMut};
use warden_wire::fuzzing::{decode_backend, decode_frontend};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % max;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Well-formed traffic to mutate: a startup, then a Parse/Bind/Execute/Sync and a Query.
fn seed_frontend() -> Vec<u8> {
    let mut b = BytesMut::new();
    warden_wire::frontend::startup_message(&[("user", "report-bot"), ("database", "shop")], &mut b);
    for (tag, body) in [
        (b'P', &b"s\0SELECT $1\0\0\x01\0\0\0\x19"[..]),
        (b'B', &b"\0s\0\0\x01\0\x01\0\x01\0\0\0\x02hi\0\0"[..]),
        (b'E', &b"\0\0\0\0\0"[..]),
        (b'S', &b""[..]),
        (b'Q', &b"SELECT 1\0"[..]),
        (b'p', &b"token\0"[..]),
    ] {
        b.put_u8(tag);
        b.put_i32(body.len() as i32 + 4);
        b.extend_from_slice(body);
    }
    b.to_vec()
}

fn seed_backend() -> Vec<u8> {
    let mut b = BytesMut::new();
    warden_wire::backend::authentication_ok(&mut b);
    warden_wire::backend::parameter_status("server_version", "15", &mut b);
    warden_wire::backend::backend_key_data(1, 2, &mut b);
    for (tag, body) in [
        (b'C', &b"SELECT 3\0"[..]),
        (b'E', &b"SERROR\0C42501\0Mno\0\0"[..]),
        (b'A', &b"\0\0\0\x01ch\0pay\0"[..]),
    ] {
        b.put_u8(tag);
        b.put_i32(body.len() as i32 + 4);
        b.extend_from_slice(body);
    }
    warden_wire::backend::ready_for_query(b'I', &mut b);
    b.to_vec()
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let seeds = [seed_frontend(), seed_backend()];
    for round in 0..6000 {
        let input = if round % 3 == 0 {
            rng.bytes(512)
        } else {
            let mut m = seeds[round % 2].clone();
            for _ in 0..(1 + rng.next() % 4) {
                let at = (rng.next() as usize) % m.len();
                match rng.next() % 3 {
                    0 => m[at] = rng.next() as u8,
                    1 => m.truncate(at),
                    _ => m.insert(at, rng.next() as u8),
                }
                if m.is_empty() {
                    break;
                }
            }
            m
        };
        decode_frontend(&input);
        decode_backend(&input);
    }
}

#[test]
fn the_seeds_themselves_decode() {
    // The mutation base must be valid, or the test above would only exercise the first byte.
    let mut buf = BytesMut::from(&seed_frontend()[..]);
    assert!(matches!(warden_wire::frontend::parse_startup(&mut buf), Ok(Some(_))));
    let mut frames = 0;
    while let Some(f) = warden_wire::split_frame(&mut buf, 1 << 16).unwrap() {
        warden_wire::frontend::FrontendMessage::parse(&f).unwrap();
        frames += 1;
    }
    assert_eq!(frames, 6);
    let mut buf = BytesMut::from(&seed_backend()[..]);
    let mut frames = 0;
    while let Some(f) = warden_wire::split_frame(&mut buf, 1 << 16).unwrap() {
        warden_wire::backend::BackendMessage::parse(&f).unwrap();
        frames += 1;
    }
    assert_eq!(frames, 7);
}
