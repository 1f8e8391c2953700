//! Just enough bencode for rtpengine's "ng" control protocol: dictionaries of byte
//! strings, lists and integers.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    Int(i64),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from (key, value) pairs.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<String> {
        self.as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Value::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decode one value from the start of `input`; returns it and the rest.
    pub fn decode(input: &[u8]) -> Result<(Value, &[u8]), String> {
        let first = *input.first().ok_or("bencode: unexpected end")?;
        match first {
            b'i' => {
                let end = input
                    .iter()
                    .position(|&c| c == b'e')
                    .ok_or("bencode: unterminated integer")?;
                let text = std::str::from_utf8(&input[1..end]).map_err(|e| e.to_string())?;
                let i = text.parse().map_err(|e| format!("bencode: {e}"))?;
                Ok((Value::Int(i), &input[end + 1..]))
            }
            b'l' => {
                let mut rest = &input[1..];
                let mut items = Vec::new();
                while rest.first() != Some(&b'e') {
                    let (v, r) = Value::decode(rest)?;
                    items.push(v);
                    rest = r;
                }
                Ok((Value::List(items), &rest[1..]))
            }
            b'd' => {
                let mut rest = &input[1..];
                let mut map = BTreeMap::new();
                while rest.first() != Some(&b'e') {
                    let (k, r) = Value::decode(rest)?;
                    let Value::Bytes(k) = k else {
                        return Err("bencode: dictionary key is not a string".into());
                    };
                    let (v, r) = Value::decode(r)?;
                    map.insert(k, v);
                    rest = r;
                }
                Ok((Value::Dict(map), &rest[1..]))
            }
            b'0'..=b'9' => {
                let colon = input
                    .iter()
                    .position(|&c| c == b':')
                    .ok_or("bencode: string without length")?;
                let text = std::str::from_utf8(&input[..colon]).map_err(|e| e.to_string())?;
                let len: usize = text.parse().map_err(|e| format!("bencode: {e}"))?;
                let body = input
                    .get(colon + 1..colon + 1 + len)
                    .ok_or("bencode: string runs past the end")?;
                Ok((Value::Bytes(body.to_vec()), &input[colon + 1 + len..]))
            }
            other => Err(format!("bencode: unexpected byte {other:#04x}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = Value::dict([
            ("command", Value::str("offer")),
            ("flags", Value::List(vec![Value::str("a"), Value::Int(-3)])),
        ]);
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out, b"d7:command5:offer5:flagsl1:ai-3eee");
        let (back, rest) = Value::decode(&out).expect("decodes");
        assert!(rest.is_empty());
        assert_eq!(back, v);
        assert!(Value::decode(b"5:abc").is_err());
    }
}
