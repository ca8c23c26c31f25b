//! Reading YAML values as cloud-init (PyYAML, YAML 1.1) reads them, for
//! `#cloud-config` and `network-config`: each error names the key.

use serde_yaml_ng::Value;

/// What a value is, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A string (a number is taken as its text).
pub fn string(v: &Value, at: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("{at}: expected a string, found {}", kind(other))),
    }
}

/// A boolean as YAML 1.1 (PyYAML's resolver) reads it: `true`/`yes`/`on`,
/// `false`/`no`/`off` too.
pub fn boolean(v: &Value, at: &str) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(true),
            "false" | "no" | "off" => Ok(false),
            _ => Err(format!("{at}: {s:?} is not a boolean")),
        },
        other => Err(format!("{at}: expected a boolean, found {}", kind(other))),
    }
}

/// A list of strings, or one string (cloud-init accepts either for keys).
pub fn strings(v: &Value, at: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| string(item, &format!("{at}[{i}]")))
            .collect(),
        other => Err(format!("{at}: expected a list of strings, found {}", kind(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_booleans_are_read_as_pyyaml_reads_them() {
        for (text, want) in [
            ("yes", true),
            ("On", true),
            ("TRUE", true),
            ("no", false),
            ("off", false),
        ] {
            assert_eq!(boolean(&Value::String(text.into()), "k"), Ok(want), "{text}");
        }
        assert!(boolean(&Value::String("y".into()), "k")
            .unwrap_err()
            .contains("not a boolean"));
        assert!(boolean(&Value::Number(1.into()), "k")
            .unwrap_err()
            .contains("found a number"));
    }

    #[test]
    fn strings_take_one_string_or_a_list() {
        assert_eq!(strings(&Value::String("a".into()), "k").unwrap(), ["a"]);
        assert!(strings(&Value::Null, "k").unwrap().is_empty());
        let e = strings(&Value::Sequence(vec![Value::Sequence(vec![])]), "k").unwrap_err();
        assert!(e.contains("k[0]: expected a string, found a list"), "{e}");
    }
}
