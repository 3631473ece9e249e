//! Key -> hash slot, exactly as Redis computes it (`cluster.c`'s `keyHashSlot`,
//! `crc16.c`): CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0, no
//! reflection) of the key, or of its hash tag, modulo 16384.
//!
//! The hash tag is the part between the first `{` and the first `}` after it, when
//! that part is not empty; otherwise (no `{`, no `}` after it, or `{}`) the whole
//! key is hashed.

/// The number of hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16 lookup table for polynomial 0x1021, built at compile time.
const TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The CRC of the two bytes `a, 0` from a zero state: with [`TABLE`], two bytes
/// take two independent lookups (the CRC is linear in its 16 bits of input).
const TABLE2: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let t = TABLE[i];
        table[i] = (t << 8) ^ TABLE[(t >> 8) as usize];
        i += 1;
    }
    table
};

/// CRC16-CCITT (XMODEM), as Redis's `crc16()`, two bytes per step: the state
/// XORed with the next two bytes is a 16-bit value `v`, and the next state is the
/// CRC of `v`'s two bytes from zero, `TABLE2[high] ^ TABLE[low]`; both lookups
/// can run at once, where a byte at a time each waits for the one before.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut pairs = bytes.chunks_exact(2);
    let crc = pairs.by_ref().fold(0u16, |crc, p| {
        let v = crc ^ u16::from_be_bytes([p[0], p[1]]);
        TABLE2[usize::from(v >> 8)] ^ TABLE[usize::from(v & 0xff)]
    });
    pairs.remainder().iter().fold(crc, |crc, &b| {
        (crc << 8) ^ TABLE[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// The part of `key` that is hashed: its hash tag when it has a non-empty one,
/// else the whole key.
pub fn hash_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The hash slot (0..16384) of `key`.
pub fn key_slot(key: &[u8]) -> u16 {
    // SLOTS is a power of two: the mask is `% 16384`.
    crc16(hash_part(key)) & (SLOTS as u16 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_check_value() {
        // The XMODEM check value, also in Redis's crc16.c test.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    /// The CRC one bit at a time, as the polynomial defines it.
    fn crc16_bitwise(bytes: &[u8]) -> u16 {
        let mut crc = 0u16;
        for &b in bytes {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn two_bytes_a_step_is_the_polynomial_crc() {
        // Every length from 0 to 64 (odd and even), bytes from a fixed xorshift.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..=64 {
            for _ in 0..50 {
                let key: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                assert_eq!(crc16(&key), crc16_bitwise(&key), "{key:?}");
            }
        }
    }

    #[test]
    fn known_slots() {
        // Values as `CLUSTER KEYSLOT` gives them (Redis 7).
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 0x31C3 & 16383);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(key_slot(b"{user1}:a"), key_slot(b"user1"));
        assert_eq!(key_slot(b"x{user1}y"), key_slot(b"user1"));
        // The first `{`, then the first `}` after it.
        assert_eq!(key_slot(b"{a}{b}"), key_slot(b"a"));
        assert_eq!(key_slot(b"{{a}}"), key_slot(b"{a"));
        assert_eq!(key_slot(b"a}{b}"), key_slot(b"b"));
        // An empty tag, or no closing brace: the whole key.
        assert_eq!(hash_part(b"{}"), b"{}");
        assert_eq!(hash_part(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_part(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_part(b"foo}bar{"), b"foo}bar{");
        assert_eq!(hash_part(b"foo{{bar}}zap"), b"{bar");
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    }

    #[test]
    fn binary_keys() {
        assert!(usize::from(key_slot(&[0xff, 0x00, b'{', 0x80, b'}'])) < SLOTS);
        assert_eq!(key_slot(&[0xff, b'{', 0x80, b'}']), key_slot(&[0x80]));
    }
}
