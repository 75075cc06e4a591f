//! A plugin's settings: the `[plugin]` TOML table, flattened to dotted keys (`value_loss.type`), checked
//! against the keys the manifest declares (an unknown key is an error naming it), with typed getters
//! that fall back to the declared defaults.

use crate::ConfigKey;
use std::collections::BTreeMap;
use toml::Value;

/// Validated settings.
#[derive(Debug, Clone, Default)]
pub struct Config {
    values: BTreeMap<String, Value>,
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => flatten(&key, t, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}

fn parse_value(text: &str) -> Result<Value, String> {
    let t: toml::Table = toml::from_str(&format!("v = {text}")).map_err(|e| e.to_string())?;
    t.get("v").cloned().ok_or_else(|| "empty value".to_string())
}

impl Config {
    /// Parses `text` and fills defaults from `keys`; unknown keys, bad TOML and values whose type differs
    /// from the default's are errors naming the key.
    pub fn parse(text: &str, keys: &[ConfigKey]) -> Result<Config, String> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| format!("plugin config is not valid TOML: {e}"))?;
        let mut given = BTreeMap::new();
        flatten("", &table, &mut given);
        let mut values = BTreeMap::new();
        for k in keys {
            let default = parse_value(&k.default_value)
                .map_err(|e| format!("default of `{}` is not TOML: {e}", k.name))?;
            values.insert(k.name.clone(), default);
        }
        for (k, v) in given {
            let Some(default) = values.get(&k) else {
                let known: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                return Err(format!(
                    "unknown plugin config key `{k}` (known: {})",
                    known.join(", ")
                ));
            };
            let v = match (default, v) {
                (Value::Float(_), Value::Integer(i)) => Value::Float(i as f64),
                (d, v) if std::mem::discriminant(d) != std::mem::discriminant(&v) => {
                    return Err(format!(
                        "plugin config key `{k}`: expected a {}, got {v}",
                        d.type_str()
                    ));
                }
                (_, v) => v,
            };
            values.insert(k, v);
        }
        Ok(Config { values })
    }

    fn get(&self, key: &str) -> Result<&Value, String> {
        self.values
            .get(key)
            .ok_or_else(|| format!("plugin reads undeclared config key `{key}`"))
    }

    /// A number.
    pub fn f64(&self, key: &str) -> Result<f64, String> {
        match self.get(key)? {
            Value::Float(f) => Ok(*f),
            Value::Integer(i) => Ok(*i as f64),
            v => Err(format!(
                "plugin config key `{key}`: expected a number, got {v}"
            )),
        }
    }

    /// A number checked to lie in [lo, hi].
    pub fn f64_in(&self, key: &str, lo: f64, hi: f64) -> Result<f64, String> {
        let v = self.f64(key)?;
        if !(lo..=hi).contains(&v) {
            return Err(format!(
                "plugin config key `{key}` = {v} must be in [{lo}, {hi}]"
            ));
        }
        Ok(v)
    }

    /// A non-negative integer.
    pub fn u64(&self, key: &str) -> Result<u64, String> {
        match self.get(key)? {
            Value::Integer(i) if *i >= 0 => Ok(*i as u64),
            v => Err(format!(
                "plugin config key `{key}`: expected a non-negative integer, got {v}"
            )),
        }
    }

    /// A boolean.
    pub fn bool(&self, key: &str) -> Result<bool, String> {
        match self.get(key)? {
            Value::Boolean(b) => Ok(*b),
            v => Err(format!(
                "plugin config key `{key}`: expected true or false, got {v}"
            )),
        }
    }

    /// A string that must be one of `allowed`.
    pub fn choice(&self, key: &str, allowed: &[&str]) -> Result<String, String> {
        match self.get(key)? {
            Value::String(s) if allowed.contains(&s.as_str()) => Ok(s.clone()),
            v => Err(format!(
                "plugin config key `{key}` = {v}: expected one of {allowed:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<ConfigKey> {
        [
            ("k_percent", "0.6"),
            ("mode", "\"signed\""),
            ("value_loss.type", "\"mc_mse\""),
            ("steps", "10"),
        ]
        .iter()
        .map(|(n, d)| ConfigKey {
            name: n.to_string(),
            default_value: d.to_string(),
            doc: String::new(),
        })
        .collect()
    }

    #[test]
    fn defaults_overrides_and_errors() {
        let c = Config::parse("", &keys()).unwrap();
        assert_eq!(c.f64("k_percent").unwrap(), 0.6);
        let c = Config::parse("k_percent = 1\n[value_loss]\ntype = \"pairwise\"", &keys()).unwrap();
        assert_eq!(c.f64("k_percent").unwrap(), 1.0);
        assert_eq!(
            c.choice("value_loss.type", &["mc_mse", "pairwise"])
                .unwrap(),
            "pairwise"
        );
        assert!(Config::parse("k_prcent = 0.5", &keys())
            .unwrap_err()
            .contains("k_prcent"));
        assert!(Config::parse("mode = 3", &keys())
            .unwrap_err()
            .contains("mode"));
        assert!(Config::parse("= nonsense", &keys())
            .unwrap_err()
            .contains("TOML"));
        let c = Config::parse("mode = \"weird\"", &keys()).unwrap();
        assert!(c.choice("mode", &["signed"]).unwrap_err().contains("weird"));
        assert!(Config::parse("steps = -1", &keys())
            .unwrap()
            .u64("steps")
            .is_err());
    }
}
