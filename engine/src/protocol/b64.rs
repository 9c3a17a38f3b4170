//! base64url without padding, as MPP writes every encoded field.
//!
//! Output is always the URL-safe alphabet without `=`. Input is read as leniently as mppx reads
//! it (ox `Base64.toBytes`): trailing `=` padding is ignored, and the standard alphabet's `+`
//! and `/` are accepted alongside `-` and `_`. Anything else (other characters, a length that
//! cannot come from whole bytes) is refused.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const URL_NO_PAD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        // mppx ignores the unused low bits of the last character; so do we.
        .with_decode_allow_trailing_bits(true),
);

/// Encodes bytes as base64url without padding.
pub fn base64url_encode(bytes: impl AsRef<[u8]>) -> String {
    URL_NO_PAD.encode(bytes)
}

/// Decodes base64url (padding optional; `+` and `/` accepted as mppx does). `None` if the text
/// is not base64.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    if trimmed.bytes().any(|b| b == b'+' || b == b'/') {
        let translated: String = trimmed
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                other => other,
            })
            .collect();
        URL_NO_PAD.decode(translated).ok()
    } else {
        URL_NO_PAD.decode(trimmed).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_without_padding_in_the_url_alphabet() {
        assert_eq!(base64url_encode(b""), "");
        assert_eq!(base64url_encode(b"f"), "Zg");
        assert_eq!(base64url_encode(b"fo"), "Zm8");
        assert_eq!(base64url_encode(b"foo"), "Zm9v");
        assert_eq!(base64url_encode([0xfb, 0xff]), "-_8");
    }

    #[test]
    fn decodes_padded_and_standard_alphabet_leniently() {
        assert_eq!(base64url_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64url_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64url_decode("+/8=").unwrap(), [0xfb, 0xff]);
    }

    #[test]
    fn refuses_non_base64() {
        for bad in ["Z", "Zm9v!", "Zm 9v", "Zm9v\n", "é"] {
            assert_eq!(base64url_decode(bad), None, "{bad:?}");
        }
    }
}
