//! Typed feature values, their declared types, timestamps and entity keys.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One feature or request value. `Null` is a missing value inside a stored row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Value {
    #[default]
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    FloatVec(Vec<f32>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a number, for min/max rules and arithmetic.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The type of a non-null value.
    pub fn dtype(&self) -> Option<DType> {
        Some(match self {
            Value::Null => return None,
            Value::Int(_) => DType::Int,
            Value::Float(_) => DType::Float,
            Value::Str(_) => DType::String,
            Value::Bool(_) => DType::Bool,
            Value::FloatVec(_) => DType::FloatVector,
        })
    }

    /// Converts to `dtype` where that loses nothing (an int where a float is declared).
    pub fn coerce(self, dtype: DType) -> Result<Value, Value> {
        match (self, dtype) {
            (Value::Null, _) => Ok(Value::Null),
            (Value::Int(i), DType::Float) => Ok(Value::Float(i as f64)),
            (v, d) if v.dtype() == Some(d) => Ok(v),
            (v, _) => Err(v),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::FloatVec(v) => write!(f, "{v:?}"),
        }
    }
}

/// A feature's declared type, as written in the definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    Int,
    Float,
    String,
    Bool,
    FloatVector,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::Int => "int",
            DType::Float => "float",
            DType::String => "string",
            DType::Bool => "bool",
            DType::FloatVector => "float_vector",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, DType::Int | DType::Float)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of an entity's join keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Int,
    String,
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Int => "int",
            KeyType::String => "string",
        }
    }
}

/// Microseconds since the Unix epoch, UTC: the one time unit inside the feature store.
pub type Micros = i64;

pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// The current time in microseconds.
pub fn now_micros() -> Micros {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}

/// Formats microseconds as RFC 3339 for messages.
pub fn format_micros(ts: Micros) -> String {
    if ts == Micros::MIN {
        return "the beginning".into();
    }
    let secs = ts.div_euclid(MICROS_PER_SECOND);
    let nanos = (ts.rem_euclid(MICROS_PER_SECOND) * 1000) as u32;
    match u64::try_from(secs) {
        Ok(s) => humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + std::time::Duration::new(s, nanos))
            .to_string(),
        Err(_) => format!("{ts}us"),
    }
}

/// Parses an RFC 3339 timestamp ("2026-09-01T00:00:00Z") or a date ("2026-09-01").
pub fn parse_timestamp(s: &str) -> Result<Micros, String> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    let t = humantime::parse_rfc3339_weak(&full)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time (e.g. 2026-09-01T00:00:00Z): {e}"))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    Ok(d.as_micros() as i64)
}

/// Parses a duration such as "30d", "12h", "90m" or "0" (none) into microseconds.
pub fn parse_duration(s: &str) -> Result<Micros, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_micros() as i64)
        .map_err(|e| format!("{s:?} is not a duration (e.g. \"30d\", \"12h\", \"0\" for none): {e}"))
}

/// One join key value of an entity row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    Int(i64),
    Str(String),
}

impl KeyValue {
    /// Converts a request value to a key of `key_type`, or says why it cannot.
    pub fn from_value(v: &Value, key_type: KeyType) -> Result<KeyValue, String> {
        match (v, key_type) {
            (Value::Int(i), KeyType::Int) => Ok(KeyValue::Int(*i)),
            (Value::Str(s), KeyType::String) => Ok(KeyValue::Str(s.clone())),
            (other, _) => Err(format!(
                "expected a {} key, got {}",
                key_type.name(),
                other.dtype().map(|d| d.name()).unwrap_or("null")
            )),
        }
    }
}

/// Appends the canonical text of one entity key to `out`: `user_id=42` or, for several
/// join keys, `user_id=42|merchant_id=7`. `|`, `=`, `%`, `{` and `}` in string keys are
/// percent-escaped so the text is unambiguous and never contains a Redis hash-tag brace.
pub fn encode_entity_key(out: &mut String, names: &[String], values: &[KeyValue]) {
    for (i, (name, value)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(name);
        out.push('=');
        match value {
            KeyValue::Int(v) => {
                use std::fmt::Write;
                let _ = write!(out, "{v}");
            }
            KeyValue::Str(s) => {
                for ch in s.chars() {
                    match ch {
                        '|' | '=' | '%' | '{' | '}' => {
                            use std::fmt::Write;
                            let _ = write!(out, "%{:02X}", ch as u32);
                        }
                        c => out.push(c),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_escape_separators() {
        let mut s = String::new();
        encode_entity_key(
            &mut s,
            &["a".into(), "b".into()],
            &[KeyValue::Str("x|y={z}%".into()), KeyValue::Int(-3)],
        );
        assert_eq!(s, "a=x%7Cy%3D%7Bz%7D%25|b=-3");
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("2h").unwrap(), 7_200_000_000);
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_timestamp("1970-01-02").unwrap(), 86_400_000_000);
        assert_eq!(format_micros(86_400_000_000), "1970-01-02T00:00:00.000000Z");
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn ints_coerce_to_floats_but_not_back() {
        assert_eq!(Value::Int(2).coerce(DType::Float), Ok(Value::Float(2.0)));
        assert!(Value::Float(2.0).coerce(DType::Int).is_err());
        assert_eq!(Value::Null.coerce(DType::Bool), Ok(Value::Null));
    }
}
