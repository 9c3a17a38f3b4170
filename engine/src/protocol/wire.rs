//! Scalar wire formats shared by requests, payloads and receipts: decimal amounts, hex strings
//! and addresses that remember how they were written.

use std::fmt;
use std::hash::{Hash, Hasher};

use alloy_primitives::{Address, B256, Bytes, hex};
use serde_json::{Map, Value};

/// Parses a base-unit amount: a canonical decimal string (`0` or no leading zeros) that fits in
/// a `u128`.
pub(crate) fn parse_amount(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    text.parse().ok()
}

/// Decodes `0x`-prefixed hex of any even length (upper, lower or mixed case).
pub(crate) fn parse_hex_bytes(text: &str) -> Option<Vec<u8>> {
    let digits = text.strip_prefix("0x")?;
    if digits.is_empty() || digits.len() % 2 != 0 || !digits.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    hex::decode(digits).ok()
}

/// Decodes a `0x`-prefixed 32-byte hash (64 hex digits).
pub(crate) fn parse_b256(text: &str) -> Option<B256> {
    let bytes = parse_hex_bytes(text)?;
    (bytes.len() == 32).then(|| B256::from_slice(&bytes))
}

/// Lower-case `0x` hex of arbitrary bytes.
pub(crate) fn hex_string(bytes: &[u8]) -> String {
    hex::encode_prefixed(bytes)
}

/// An EVM address together with the exact text it was written as.
///
/// MPP echoes addresses exactly as given (mppx compares them as strings inside the HMAC), so the
/// original spelling is kept for output, while equality and hashing use the 20 address bytes:
/// `0xabc…` and `0xABC…` name the same account.
#[derive(Clone)]
pub struct HexAddress {
    address: Address,
    text: String,
}

impl HexAddress {
    /// Parses `0x` followed by exactly 40 hex digits (any case; the EIP-55 checksum is not
    /// enforced, as in mppx).
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix("0x")?;
        if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let bytes = hex::decode(digits).ok()?;
        Some(Self {
            address: Address::from_slice(&bytes),
            text: text.to_owned(),
        })
    }

    /// Wraps an address, written in its EIP-55 checksummed form.
    pub fn from_address(address: Address) -> Self {
        Self {
            address,
            text: address.to_checksum(None),
        }
    }

    /// The 20-byte address.
    pub const fn address(&self) -> Address {
        self.address
    }

    /// The text this address is written as on the wire.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<Address> for HexAddress {
    fn from(address: Address) -> Self {
        Self::from_address(address)
    }
}

impl PartialEq for HexAddress {
    fn eq(&self, other: &Self) -> bool {
        self.address == other.address
    }
}

impl Eq for HexAddress {}

impl Hash for HexAddress {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.address.hash(state);
    }
}

impl fmt::Debug for HexAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for HexAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why an object field could not be read; the caller turns it into its own error variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldDefect {
    Missing,
    NotAString,
    NotANumber,
    NotABool,
    NotAnObject,
    Invalid(&'static str),
}

impl FieldDefect {
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotAString => "not a string",
            Self::NotANumber => "not a non-negative integer",
            Self::NotABool => "not a boolean",
            Self::NotAnObject => "not an object",
            Self::Invalid(reason) => reason,
        }
    }
}

/// Typed accessors over a JSON object, each failing with a [`FieldDefect`].
pub(crate) struct Fields<'a>(pub(crate) &'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, FieldDefect> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(FieldDefect::NotAString),
        }
    }

    pub(crate) fn str(&self, key: &str) -> Result<&'a str, FieldDefect> {
        self.opt_str(key)?.ok_or(FieldDefect::Missing)
    }

    pub(crate) fn opt_amount(&self, key: &str) -> Result<Option<u128>, FieldDefect> {
        self.opt_str(key)?
            .map(|s| parse_amount(s).ok_or(FieldDefect::Invalid("not a canonical decimal u128")))
            .transpose()
    }

    pub(crate) fn amount(&self, key: &str) -> Result<u128, FieldDefect> {
        self.opt_amount(key)?.ok_or(FieldDefect::Missing)
    }

    pub(crate) fn opt_address(&self, key: &str) -> Result<Option<HexAddress>, FieldDefect> {
        self.opt_str(key)?
            .map(|s| {
                HexAddress::parse(s)
                    .ok_or(FieldDefect::Invalid("not a 0x-prefixed 20-byte address"))
            })
            .transpose()
    }

    pub(crate) fn address(&self, key: &str) -> Result<HexAddress, FieldDefect> {
        self.opt_address(key)?.ok_or(FieldDefect::Missing)
    }

    pub(crate) fn opt_b256(&self, key: &str) -> Result<Option<B256>, FieldDefect> {
        self.opt_str(key)?
            .map(|s| parse_b256(s).ok_or(FieldDefect::Invalid("not 0x-prefixed 32-byte hex")))
            .transpose()
    }

    pub(crate) fn b256(&self, key: &str) -> Result<B256, FieldDefect> {
        self.opt_b256(key)?.ok_or(FieldDefect::Missing)
    }

    pub(crate) fn hex_bytes(&self, key: &str) -> Result<Bytes, FieldDefect> {
        let s = self.str(key)?;
        parse_hex_bytes(s)
            .map(Bytes::from)
            .ok_or(FieldDefect::Invalid(
                "not 0x-prefixed, non-empty, even-length hex",
            ))
    }

    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>, FieldDefect> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(FieldDefect::NotANumber),
            Some(_) => Err(FieldDefect::NotANumber),
        }
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>, FieldDefect> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(FieldDefect::NotABool),
        }
    }

    pub(crate) fn object(&self, key: &str) -> Result<Fields<'a>, FieldDefect> {
        match self.0.get(key) {
            None => Err(FieldDefect::Missing),
            Some(Value::Object(map)) => Ok(Fields(map)),
            Some(_) => Err(FieldDefect::NotAnObject),
        }
    }

    pub(crate) fn opt_object(&self, key: &str) -> Result<Option<Fields<'a>>, FieldDefect> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields(map))),
            Some(_) => Err(FieldDefect::NotAnObject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_canonical_decimal_u128() {
        assert_eq!(parse_amount("0"), Some(0));
        assert_eq!(parse_amount("250000"), Some(250_000));
        assert_eq!(parse_amount(&u128::MAX.to_string()), Some(u128::MAX));
        for bad in [
            "", "00", "01", "-1", "+1", "1.5", "1e3", " 1", "1 ", "0x10", "١",
        ] {
            assert_eq!(parse_amount(bad), None, "{bad:?}");
        }
        // One above u128::MAX.
        assert_eq!(
            parse_amount("340282366920938463463374607431768211456"),
            None
        );
    }

    #[test]
    fn hex_needs_prefix_and_even_length() {
        assert_eq!(parse_hex_bytes("0xABcd"), Some(vec![0xab, 0xcd]));
        for bad in ["abcd", "0x", "0xabc", "0xzz", "0Xab", "0x ab"] {
            assert_eq!(parse_hex_bytes(bad), None, "{bad:?}");
        }
        assert!(parse_b256(&format!("0x{}", "11".repeat(32))).is_some());
        assert!(parse_b256(&format!("0x{}", "11".repeat(31))).is_none());
    }

    #[test]
    fn addresses_keep_their_spelling_and_compare_by_bytes() {
        let mixed = HexAddress::parse("0x70997970C51812dc3A010C7d01b50e0d17dc79C8").unwrap();
        let lower = HexAddress::parse("0x70997970c51812dc3a010c7d01b50e0d17dc79c8").unwrap();
        assert_eq!(mixed, lower);
        assert_eq!(mixed.as_str(), "0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
        assert_eq!(lower.as_str(), "0x70997970c51812dc3a010c7d01b50e0d17dc79c8");
        assert_eq!(
            HexAddress::from_address(lower.address()).as_str(),
            mixed.as_str()
        );
        for bad in [
            "70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "0x1234",
            "0xg0997970C51812dc3A010C7d01b50e0d17dc79C8",
        ] {
            assert!(HexAddress::parse(bad).is_none(), "{bad:?}");
        }
    }
}
