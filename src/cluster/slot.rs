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

/// CRC16-CCITT (XMODEM), as Redis's `crc16()`.
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
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
