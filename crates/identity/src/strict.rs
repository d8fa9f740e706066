//! A strict JSON parse for the parts of a JWT: an object whose keys are unique at every level.
//!
//! `serde_json` keeps the last of duplicate keys, and another parser may keep the first, so a
//! token (or client assertion) with `{"oid": "a", "oid": "b"}` could mean different things to
//! the signer, to Cloister and to whatever relies on Cloister's answer. RFC 7519 §4 lets a
//! recipient reject such a JWT; Cloister does, for the header and the payload alike.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// A JSON value whose objects were checked for duplicate keys while parsing.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key '{k}'")));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `bytes` as one JSON object with unique keys at every level (and nothing after it).
pub fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let mut d = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(v) = StrictValue::deserialize(&mut d).map_err(|e| e.to_string())?;
    d.end().map_err(|e| e.to_string())?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err("not a JSON object".into()),
    }
}

/// Checks that a compact JWS's header and payload are each a strict JSON object; the
/// signature is not looked at.
pub fn check_jwt(token: &str) -> Result<(), String> {
    let mut parts = token.splitn(3, '.');
    for what in ["header", "payload"] {
        let seg = parts.next().ok_or_else(|| format!("no {what}"))?;
        let raw = URL_SAFE_NO_PAD
            .decode(seg)
            .map_err(|e| format!("{what}: {e}"))?;
        object(&raw).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\\\\\"é ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object_value() -> impl Strategy<Value = Map<String, Value>> {
        proptest::collection::btree_map("[a-z]{1,4}", json_value(), 1..6)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// Any object serde_json writes (keys unique by construction) parses back the same.
        #[test]
        fn unique_keys_round_trip(m in object_value()) {
            let text = serde_json::to_vec(&Value::Object(m.clone())).unwrap();
            prop_assert_eq!(object(&text).unwrap(), m);
        }

        /// Repeating any key of an object, at the top or nested, is refused, whatever the
        /// values and wherever the repeat is put.
        #[test]
        fn a_repeated_key_is_refused(m in object_value(), extra in json_value(), nest in any::<bool>(), front in any::<bool>()) {
            let (k, _) = m.iter().next().unwrap();
            let inner = serde_json::to_string(&Value::Object(m.clone())).unwrap();
            let body = &inner[1..inner.len() - 1];
            let dup = format!("{}:{}", serde_json::to_string(k).unwrap(), extra);
            let obj = if front { format!("{{{dup},{body}}}") } else { format!("{{{body},{dup}}}") };
            let text = if nest { format!("{{\"outer\":[1,{obj}]}}") } else { obj };
            prop_assert!(serde_json::from_str::<Value>(&text).is_ok(), "serde_json alone accepts it");
            let e = object(text.as_bytes()).unwrap_err();
            prop_assert!(e.contains("duplicate key"), "{}", e);
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = object(&b);
        }
    }

    #[test]
    fn escaped_spellings_of_one_key_are_the_same_key() {
        assert!(object(br#"{"oid":"a","o\u0069d":"b"}"#).is_err());
        assert!(object(br#"{"a":1} x"#).is_err());
        assert!(object(b"[1]").is_err());
        assert!(object(br#"{"a":{"b":1,"b":2}}"#).is_err());
        assert_eq!(object(br#"{"a":1,"b":{"a":2}}"#).unwrap().len(), 2);
    }
}
