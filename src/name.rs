//! Tunnel names: DNS labels, validated on the gateway and generated on the client.

use rand::Rng;

/// Why a tunnel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name has no characters.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than a DNS label may be.
    #[error("the name has {0} characters; at most 63 are allowed")]
    TooLong(usize),
    /// The name has a character outside `a-z`, `0-9` and `-`.
    #[error("the name may contain only lowercase letters, digits and '-', found {0:?}")]
    BadChar(char),
    /// The name starts or ends with `-`.
    #[error("the name may not start or end with '-'")]
    EdgeHyphen,
}

/// Checks that `name` is a DNS label: `a-z`, `0-9` and `-`, 1 to 63 characters, with no
/// hyphen at either end.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong(name.chars().count()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar(c));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen);
    }
    Ok(())
}

/// A random name of 10 characters from `a-z0-9`, starting with a letter.
///
/// 10 characters carry about 51 bits, so an unlisted URL is not guessable by scanning.
pub fn random() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let first = char::from(ALPHABET[rng.random_range(0..26)]);
    std::iter::once(first)
        .chain((0..9).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "demo", "my-app-2", &"x".repeat(63)] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_others() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate(&"x".repeat(64)), Err(NameError::TooLong(64)));
        assert_eq!(validate("Demo"), Err(NameError::BadChar('D')));
        assert_eq!(validate("a.b"), Err(NameError::BadChar('.')));
        assert_eq!(validate("-a"), Err(NameError::EdgeHyphen));
        assert_eq!(validate("a-"), Err(NameError::EdgeHyphen));
    }

    #[test]
    fn random_names_are_valid_and_differ() {
        let a = random();
        assert_eq!(validate(&a), Ok(()));
        assert_eq!(a.len(), 10);
        assert_ne!(a, random());
    }
}
