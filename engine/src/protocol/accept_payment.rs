//! The `Accept-Payment` request header: `method/intent[;q=x]` preferences with `*` wildcards
//! (PROTOCOL.md §1.7), read and applied as mppx does.

use std::fmt::Write as _;

use super::ProtocolError;
use super::challenge::Challenge;
use super::error::echo;

/// Largest `Accept-Payment` value accepted (it is a short list of preferences).
pub const MAX_ACCEPT_PAYMENT_LEN: usize = 4 * 1024;

/// One preference: a method and an intent (each possibly `*`) with a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentPreference {
    /// Method name or `*`.
    pub method: String,
    /// Intent name or `*`.
    pub intent: String,
    /// Weight in thousandths (`q=0.5` is 500); 0 means "not acceptable".
    pub q_millis: u16,
}

impl PaymentPreference {
    fn matches(&self, method: &str, intent: &str) -> bool {
        (self.method == "*" || self.method == method)
            && (self.intent == "*" || self.intent == intent)
    }

    fn specificity(&self) -> u8 {
        u8::from(self.method != "*") + u8::from(self.intent != "*")
    }
}

/// A parsed `Accept-Payment` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptPayment {
    preferences: Vec<PaymentPreference>,
}

fn is_token(s: &str) -> bool {
    s == "*"
        || (!s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
}

/// `0`, `0.d{0,3}`, `1`, `1.0{0,3}` in thousandths.
fn parse_q(value: &str) -> Option<u16> {
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match whole {
        "0" => {
            let digits = format!("{frac:0<3}");
            digits.parse().ok()
        }
        "1" if frac.bytes().all(|b| b == b'0') => Some(1000),
        _ => None,
    }
}

impl AcceptPayment {
    /// Parses `method/intent[;q=x][;other=y], …`. Names are lower-case tokens (`[a-z0-9-]+`) or
    /// `*`; `q` is an HTTP qvalue (at most three decimals, 0..=1); other parameters are
    /// ignored. An empty header is an error.
    pub fn parse(value: &str) -> Result<Self, ProtocolError> {
        let bad = |entry: &str, reason| ProtocolError::InvalidAcceptPayment {
            entry: echo(entry),
            reason,
        };
        if value.len() > MAX_ACCEPT_PAYMENT_LEN {
            return Err(bad("", "header too long"));
        }
        let mut preferences = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.split(';').map(str::trim);
            let range = parts.next().unwrap_or_default();
            let (method, intent) = range
                .split_once('/')
                .map(|(m, i)| (m.trim(), i.trim()))
                .ok_or_else(|| bad(entry, "expected method/intent"))?;
            if !is_token(method) || !is_token(intent) {
                return Err(bad(entry, "method and intent must be [a-z0-9-]+ or *"));
            }
            let mut q_millis = 1000;
            for param in parts.filter(|p| !p.is_empty()) {
                let (name, v) = param
                    .split_once('=')
                    .map(|(n, v)| (n.trim(), v.trim()))
                    .ok_or_else(|| bad(entry, "parameter without ="))?;
                let name_ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !name_ok || v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(bad(entry, "malformed parameter"));
                }
                if name == "q" {
                    q_millis = parse_q(v).ok_or_else(|| bad(entry, "q must be an HTTP qvalue"))?;
                }
            }
            preferences.push(PaymentPreference {
                method: method.to_owned(),
                intent: intent.to_owned(),
                q_millis,
            });
        }
        if preferences.is_empty() {
            return Err(bad(value, "empty header"));
        }
        Ok(Self { preferences })
    }

    /// The preferences in header order.
    pub fn preferences(&self) -> &[PaymentPreference] {
        &self.preferences
    }

    /// The weight of `method/intent`: the most specific matching preference wins, then the
    /// highest q, then the earliest. `None` if nothing matches.
    pub fn weight(&self, method: &str, intent: &str) -> Option<u16> {
        let mut best: Option<&PaymentPreference> = None;
        for p in self
            .preferences
            .iter()
            .filter(|p| p.matches(method, intent))
        {
            let better =
                best.is_none_or(|b| (p.specificity(), p.q_millis) > (b.specificity(), b.q_millis));
            if better {
                best = Some(p);
            }
        }
        best.map(|p| p.q_millis)
    }

    /// Orders offers (`(method, intent)` pairs) by preference: offers with weight 0 or no match
    /// are dropped, the rest sorted by weight, ties in offer order. Returns offer indices.
    pub fn rank(&self, offers: &[(&str, &str)]) -> Vec<usize> {
        let mut ranked: Vec<(usize, u16)> = offers
            .iter()
            .enumerate()
            .filter_map(|(i, (m, it))| self.weight(m, it).filter(|&q| q > 0).map(|q| (i, q)))
            .collect();
        // Stable sort keeps offer order among equal weights.
        ranked.sort_by_key(|&(_, q)| std::cmp::Reverse(q));
        ranked.into_iter().map(|(i, _)| i).collect()
    }

    /// Orders challenges by preference, as [`Self::rank`] does.
    pub fn rank_challenges<'a>(&self, challenges: &'a [Challenge]) -> Vec<&'a Challenge> {
        let offers: Vec<(&str, &str)> = challenges
            .iter()
            .map(|c| (c.method(), c.intent()))
            .collect();
        self.rank(&offers)
            .into_iter()
            .map(|i| &challenges[i])
            .collect()
    }

    /// The header value (`q` left out when 1), as mppx's client writes it.
    pub fn to_header_value(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.preferences.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}/{}", p.method, p.intent);
            if p.q_millis != 1000 {
                let q = format!("{:03}", p.q_millis);
                let _ = write!(out, ";q=0.{}", q.trim_end_matches('0'));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_and_wildcards() {
        let a = AcceptPayment::parse("tempo/charge, tempo/session;q=0.5 , */*;q=0.001;foo=bar")
            .unwrap();
        let q: Vec<(&str, &str, u16)> = a
            .preferences()
            .iter()
            .map(|p| (p.method.as_str(), p.intent.as_str(), p.q_millis))
            .collect();
        assert_eq!(
            q,
            [
                ("tempo", "charge", 1000),
                ("tempo", "session", 500),
                ("*", "*", 1)
            ]
        );
        assert_eq!(
            a.to_header_value(),
            "tempo/charge, tempo/session;q=0.5, */*;q=0.001"
        );
        assert_eq!(
            AcceptPayment::parse("a/b;q=1.000").unwrap().preferences()[0].q_millis,
            1000
        );
        assert_eq!(
            AcceptPayment::parse("a/b;q=0").unwrap().preferences()[0].q_millis,
            0
        );
    }

    #[test]
    fn refuses_bad_entries() {
        for bad in [
            "",
            " , ",
            "tempo",
            "Tempo/session",
            "tempo/session/x",
            "tempo/ses sion",
            "tempo/session;q=1.5",
            "tempo/session;q=0.1234",
            "tempo/session;q=2",
            "tempo/session;q=-0",
            "tempo/session;q",
            "tempo/session;=1",
            "tempo/session;q=",
        ] {
            assert!(AcceptPayment::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn most_specific_match_wins_and_zero_excludes() {
        let a = AcceptPayment::parse("*/*;q=0.1, tempo/*;q=0.8, tempo/charge;q=0, stripe/charge")
            .unwrap();
        assert_eq!(a.weight("tempo", "session"), Some(800));
        assert_eq!(a.weight("tempo", "charge"), Some(0));
        assert_eq!(a.weight("evm", "charge"), Some(100));
        let offers = [
            ("tempo", "charge"),
            ("evm", "charge"),
            ("tempo", "session"),
            ("stripe", "charge"),
        ];
        assert_eq!(a.rank(&offers), [3, 2, 1]);
        let none = AcceptPayment::parse("stripe/charge").unwrap();
        assert_eq!(none.rank(&offers), [3]);
    }
}
