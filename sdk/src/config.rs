//! A plugin's settings: ONE struct declared with [`settings!`](crate::settings), each key named once with
//! its type, default and doc comment. The `[plugin]` table of a run config is deserialised into it by serde
//! (unknown keys and wrongly typed values are errors naming the key; integers are accepted for floats;
//! nested structs are TOML sub-tables, e.g. `[value_loss]`), and the manifest's `config-keys` (dotted name,
//! default as TOML, doc) are generated from it.

use crate::ConfigKey;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A settings struct (implemented by [`settings!`](crate::settings)).
pub trait Settings: Default + Serialize + DeserializeOwned {
    /// (dotted key, doc) for every key and sub-table, in declaration order.
    fn docs() -> Vec<(String, String)>;

    /// The manifest's config keys: every leaf key with its default rendered as TOML and its doc.
    fn keys() -> Vec<ConfigKey> {
        let table = toml::Table::try_from(Self::default()).unwrap_or_default();
        let mut leaves = Vec::new();
        flatten("", &table, &mut leaves);
        Self::docs()
            .into_iter()
            .filter_map(|(name, doc)| {
                let (_, v) = leaves.iter().find(|(k, _)| *k == name)?;
                Some(ConfigKey {
                    name,
                    default_value: v.to_string(),
                    doc,
                })
            })
            .collect()
    }

    /// Parses the `[plugin]` table's TOML text (empty = all defaults).
    fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| format!("plugin config: {}", e.to_string().trim_end()))
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

/// A type a settings field may have: scalars, strings, [`settings!`](crate::settings) enums and nested
/// settings structs (whose keys become `field.key`).
pub trait SettingValue {
    /// (key, doc) of the keys below this one (nested settings only).
    fn nested_docs() -> Vec<(String, String)> {
        Vec::new()
    }
}

macro_rules! leaf {
    ($($t:ty),*) => { $(impl SettingValue for $t {})* };
}
leaf!(f64, f32, u64, u32, u16, u8, usize, i64, i32, bool, String);

/// `Ok` when `lo ≤ value ≤ hi`, else an error naming the key.
pub fn check_range(key: &str, value: f64, lo: f64, hi: f64) -> Result<(), String> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "plugin config key `{key}` = {value} must be in [{lo}, {hi}]"
        ))
    }
}

/// The settings of a plugin without any.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl Settings for NoSettings {
    fn docs() -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Declares a plugin's settings: a struct whose fields are `name: Type = default` with a doc comment
/// each (serde-deserialised, unknown keys refused, missing keys defaulted), or an enum of unit variants
/// written in snake_case in TOML (`mode = "signed"`).
///
/// ```
/// wmtp_sdk::settings! {
///     pub enum Mode { Signed, Absolute }
/// }
/// wmtp_sdk::settings! {
///     pub struct Rho1Settings {
///         /// share of valid tokens kept per head, in (0, 1]
///         k_percent: f64 = 0.6,
///         /// which excess selects tokens
///         mode: Mode = Mode::Signed,
///     }
/// }
/// ```
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, $crate::serde::Serialize, $crate::serde::Deserialize)]
        #[serde(crate = "wmtp_sdk::serde", deny_unknown_fields, default)]
        $vis struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }
        impl ::core::default::Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }
        impl $crate::config::Settings for $name {
            fn docs() -> Vec<(String, String)> {
                #[allow(unused_mut)]
                let mut out: Vec<(String, String)> = Vec::new();
                $(
                    let key = stringify!($field).trim_start_matches("r#").to_string();
                    let doc: Vec<&str> = vec![$($doc.trim()),*];
                    out.push((key.clone(), doc.join(" ")));
                    for (k, d) in <$ty as $crate::config::SettingValue>::nested_docs() {
                        out.push((format!("{key}.{k}"), d));
                    }
                )*
                out
            }
        }
        impl $crate::config::SettingValue for $name {
            fn nested_docs() -> Vec<(String, String)> {
                <Self as $crate::config::Settings>::docs()
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[doc = $doc:literal])* $variant:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, $crate::serde::Serialize, $crate::serde::Deserialize)]
        #[serde(crate = "wmtp_sdk::serde", rename_all = "snake_case")]
        $vis enum $name {
            $( $(#[doc = $doc])* $variant, )+
        }
        impl $crate::config::SettingValue for $name {}
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::settings! {
        enum Kind { McMse, LambdaReturn }
    }
    crate::settings! {
        struct Loss {
            /// which loss
            r#type: Kind = Kind::McMse,
            /// smooth-L1 threshold
            delta: f64 = 0.5,
        }
    }
    crate::settings! {
        /// Test settings.
        struct Demo {
            /// share kept
            k_percent: f64 = 0.6,
            /// steps
            steps: u64 = 10,
            /// the loss
            value_loss: Loss = Loss::default(),
        }
    }

    #[test]
    fn keys_defaults_nesting_and_errors() {
        let keys: Vec<(String, String, String)> = Demo::keys()
            .into_iter()
            .map(|k| (k.name, k.default_value, k.doc))
            .collect();
        let want = [
            ("k_percent", "0.6", "share kept"),
            ("steps", "10", "steps"),
            ("value_loss.type", "\"mc_mse\"", "which loss"),
            ("value_loss.delta", "0.5", "smooth-L1 threshold"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(keys, want);
        assert_eq!(Demo::parse("").unwrap(), Demo::default());
        let d = Demo::parse("k_percent = 1\n[value_loss]\ntype = \"lambda_return\"").unwrap();
        assert_eq!(
            (d.k_percent, d.value_loss.r#type),
            (1.0, Kind::LambdaReturn)
        );
        assert_eq!(d.value_loss.delta, 0.5);
        for (bad, named) in [
            ("k_prcent = 0.5", "k_prcent"),
            ("steps = -1", "steps"),
            ("[value_loss]\ntype = \"weird\"", "weird"),
            ("[value_loss]\nhuber = 1", "huber"),
        ] {
            let e = Demo::parse(bad).unwrap_err();
            assert!(e.contains(named), "{bad}: {e}");
        }
        assert!(Demo::parse("= nonsense").is_err());
        assert!(check_range("k", 2.0, 0.0, 1.0).unwrap_err().contains("`k`"));
    }
}
