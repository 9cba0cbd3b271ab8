//! Validated identifiers: datacenter ids, keyspace names and keys.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest datacenter id, in bytes.
pub const DC_ID_BYTES_MAX: usize = 32;
/// Longest keyspace name, in bytes.
pub const KEYSPACE_BYTES_MAX: usize = 64;
/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 512;

/// Why an identifier was refused. Nothing is created when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier was empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of identifier.
        what: &'static str,
    },
    /// The identifier was longer than its limit.
    #[error("{what} is {len} bytes, more than the {max}-byte limit")]
    TooLong {
        /// Which kind of identifier.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The identifier contained a character outside its allowed set.
    #[error("{what} {value:?} contains {ch:?}; allowed: {allowed}")]
    BadChar {
        /// Which kind of identifier.
        what: &'static str,
        /// The refused identifier.
        value: String,
        /// The first refused character.
        ch: char,
        /// The allowed characters, in words.
        allowed: &'static str,
    },
}

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(usize, char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > max {
        return Err(IdError::TooLong { what, len: value.len(), max });
    }
    if let Some((_, ch)) = value.char_indices().find(|&(i, c)| !ok(i, c)) {
        return Err(IdError::BadChar { what, value: value.to_string(), ch, allowed });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Shared, not copied, when cloned: ids are cloned on every vector and op.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        // Deserialization validates too: an identifier decoded from the wire or a file is held
        // to the same rules as one typed by an operator.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A datacenter id: the name of a DC in mesh.toml. Lowercase ASCII letters, digits and `-`,
    /// starting with a letter, at most [`DC_ID_BYTES_MAX`] bytes.
    DcId
);
id_type!(
    /// A keyspace name. Lowercase ASCII letters, digits, `_` and `-`, starting with a letter, at
    /// most [`KEYSPACE_BYTES_MAX`] bytes.
    Keyspace
);
id_type!(
    /// A key inside a keyspace. Any UTF-8 text without control characters, at most
    /// [`KEY_BYTES_MAX`] bytes.
    Key
);

impl DcId {
    /// Validates and wraps a datacenter id.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check("datacenter id", &s, DC_ID_BYTES_MAX, "a-z, 0-9 and '-', starting with a letter", |i, c| {
            c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || c == '-'))
        })?;
        Ok(Self(s.into()))
    }
}

impl Keyspace {
    /// Validates and wraps a keyspace name.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check(
            "keyspace",
            &s,
            KEYSPACE_BYTES_MAX,
            "a-z, 0-9, '_' and '-', starting with a letter",
            |i, c| c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || c == '-' || c == '_')),
        )?;
        Ok(Self(s.into()))
    }
}

impl Key {
    /// Validates and wraps a key.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check("key", &s, KEY_BYTES_MAX, "any character but control characters", |_, c| !c.is_control())?;
        Ok(Self(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_ids_follow_the_documented_alphabet() {
        assert!(DcId::new("us-east").is_ok());
        assert!(DcId::new("eu-central-1").is_ok());
        assert_eq!(DcId::new(""), Err(IdError::Empty { what: "datacenter id" }));
        assert!(matches!(DcId::new("US-east"), Err(IdError::BadChar { ch: 'U', .. })));
        assert!(matches!(DcId::new("1dc"), Err(IdError::BadChar { ch: '1', .. })));
        assert!(matches!(DcId::new("a".repeat(33)), Err(IdError::TooLong { len: 33, .. })));
    }

    #[test]
    fn keys_refuse_control_characters_and_oversize() {
        assert!(Key::new("user:10000").is_ok());
        assert!(Key::new("ключ/с пробелом").is_ok());
        assert!(matches!(Key::new("a\nb"), Err(IdError::BadChar { ch: '\n', .. })));
        assert!(matches!(Key::new("k".repeat(513)), Err(IdError::TooLong { .. })));
    }

    #[test]
    fn deserializing_an_invalid_id_fails() {
        let err = toml::from_str::<std::collections::BTreeMap<String, DcId>>("a = 'Bad Id'").unwrap_err();
        assert!(err.to_string().contains("datacenter id"), "{err}");
    }
}
