//! The YAML document as a tree of [`Node`]s, and the way back from a key path to a line.
//! `serde_norway::Value` would lose what the error messages need: [`Node`] mappings keep
//! duplicate keys (so they can be reported with a key path) and document order.
//! [`locate_line`] re-parses the text to find the line of a key named by a [`KeyPath`],
//! so the tree itself carries no positions.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A raw YAML value: like `serde_norway::Value`, but mappings keep duplicates and
/// document order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// Describes the node for a type error; `reveal` includes scalar values.
    pub(super) fn describe(&self, reveal: bool) -> String {
        match (self, reveal) {
            (Node::Null, _) => "null".into(),
            (Node::Bool(b), true) => format!("boolean `{b}`"),
            (Node::Int(i), true) => format!("integer `{i}`"),
            (Node::Float(f), true) => format!("number `{f}`"),
            (Node::Str(s), true) => format!("string {s:?}"),
            (Node::Bool(_), false) => "a boolean".into(),
            (Node::Int(_), false) => "an integer".into(),
            (Node::Float(_), false) => "a number".into(),
            (Node::Str(_), false) => "a string".into(),
            (Node::Seq(_), _) => "a list".into(),
            (Node::Map(_), _) => "a mapping".into(),
        }
    }

    /// The text a scalar key is matched by.
    pub(super) fn key_text(&self) -> Option<String> {
        match self {
            Node::Null => Some("null".into()),
            Node::Bool(b) => Some(b.to_string()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(f) => Some(f.to_string()),
            Node::Str(s) => Some(s.clone()),
            Node::Seq(_) | Node::Map(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        i128::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry()? {
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Node, A::Error> {
        Err(de::Error::custom(
            "YAML tags (`!name value`) are not supported in this file",
        ))
    }
}

// ---------------------------------------------------------------------------------
// Line lookup: re-parses the text and stops with an error at the wanted key, whose
// location serde_norway fills in.

const LOCATE_MARKER: &str = "\u{0}config-locate\u{0}";

/// The 1-based line of the `occurrence`-th (0-based) appearance of the key at `path`.
pub(super) fn locate_line(text: &str, path: &[String], occurrence: usize) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let de = serde_norway::Deserializer::from_str(text);
    match (Locate { path, occurrence }).deserialize(de) {
        Ok(()) => None,
        Err(e) if e.to_string().contains(LOCATE_MARKER) => e.location().map(|l| l.line()),
        Err(_) => None,
    }
}

struct Locate<'a> {
    path: &'a [String],
    occurrence: usize,
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let mut seen = 0;
        loop {
            let seed = KeySeed {
                target: first,
                raise_at: rest.is_empty().then_some(self.occurrence),
                seen: &mut seen,
            };
            match map.next_key_seed(seed)? {
                None => return Ok(()),
                Some(true) => map.next_value_seed(Locate {
                    path: rest,
                    occurrence: self.occurrence,
                })?,
                Some(false) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }
}

/// Deserializes a mapping key; `true` if it is `target`. Fails (so the error carries the
/// key's location) at the `raise_at`-th match.
struct KeySeed<'a> {
    target: &'a str,
    raise_at: Option<usize>,
    seen: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        // The check must fail inside the visitor: only errors raised while the key's
        // scalar is being visited get the key's location.
        d.deserialize_any(self)
    }
}

impl KeySeed<'_> {
    fn check<E: de::Error>(self, key: &str) -> Result<bool, E> {
        if key != self.target {
            return Ok(false);
        }
        let n = *self.seen;
        *self.seen += 1;
        if self.raise_at == Some(n) {
            Err(E::custom(LOCATE_MARKER))
        } else {
            Ok(true)
        }
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.check(&Node::Bool(v).key_text().unwrap_or_default())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        self.check(&Node::Float(v).key_text().unwrap_or_default())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.check(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.check(&Node::Null.key_text().unwrap_or_default())
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------
// Key paths: where in the tree a setting is, e.g. `redis_databases.cache.db`.

/// The keys from the document's root to a setting (empty: the whole document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyPath(pub(super) Vec<String>);

impl KeyPath {
    pub(super) fn root() -> KeyPath {
        KeyPath(Vec::new())
    }
    pub(super) fn child(&self, key: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(key.to_string());
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}
