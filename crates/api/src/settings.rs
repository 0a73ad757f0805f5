//! The seed's `AGENTMESH_*` environment variables, parsed once at start-up into typed settings.
//!
//! Every variable is read. An unset variable takes the seed's default; a set variable with a bad
//! value is an error that names the variable — never silently replaced by a default. Parsing is
//! pure: it takes a lookup function, so tests do not touch the process environment.

use std::fmt;
use std::str::FromStr;

use crate::names::env;

/// Why the settings could not be read: the variable, its value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub variable: &'static str,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?}: expected {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for SettingsError {}

/// Where audit entries (and, with `redis`, the cache) are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageBackend {
    Memory,
    Redis,
    Postgres,
}

/// A policy preset named by `AGENTMESH_GOVERNANCE_DEFAULT_POLICY` or `AGENTMESH_POLICY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresetName {
    Standard,
    Strict,
    Permissive,
}

impl PresetName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Strict => "strict",
            Self::Permissive => "permissive",
        }
    }
}

/// Log levels, least to most severe: `AGENTMESH_LOG_LEVEL`, and a MeshLogicAgent's
/// `logging.level` (in lower case there).
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The `tracing` filter directive of this level.
    pub fn as_directive(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Everything the seed's variables say.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub storage_backend: StorageBackend,
    pub cache_enabled: bool,
    /// Seconds a handshake result or registry entry stays cached.
    pub cache_ttl_seconds: u64,
    pub redis_host: String,
    pub redis_port: u16,
    pub trust_initial_score: i32,
    /// Points per hour.
    pub trust_decay_rate: f64,
    pub trust_decay_floor: i32,
    pub trust_min_threshold: i32,
    pub delegation_max_depth: u32,
    /// Preset for identities no TrustPolicy selects.
    pub default_policy: PresetName,
    /// Record would-be denials instead of denying, for identities no TrustPolicy selects.
    pub shadow_mode: bool,
    pub audit_retention_days: u32,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub otel_enabled: bool,
    pub otel_endpoint: String,
    /// The sidecar's preset when it has no policy from the operator.
    pub policy: PresetName,
    /// The private key: inline PEM or a path (the sidecar reads it; see agentmesh-identity).
    pub agent_private_key: Option<String>,
    /// URL agents use to reach their sidecar.
    pub proxy_url: String,
}

impl Settings {
    /// Reads every variable from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `AGENTMESH_LOG_LEVEL` and `AGENTMESH_LOG_FORMAT` alone, parsed as [`Settings`] parses
    /// them (same defaults: `info`, `json`): for the probe, which reads no other setting.
    pub fn logging_from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(LogLevel, LogFormat), SettingsError> {
        let vars = Vars(&lookup);
        Ok((vars.log_level()?, vars.log_format()?))
    }

    /// `AGENTMESH_OTEL_ENABLED` and `AGENTMESH_OTEL_ENDPOINT` alone, parsed as [`Settings`]
    /// parses them: for the probe.
    pub fn otel_from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(bool, String), SettingsError> {
        let vars = Vars(&lookup);
        Ok((
            vars.boolean(env::OTEL_ENABLED, false)?,
            vars.url(env::OTEL_ENDPOINT, "http://otel-collector:4317")?,
        ))
    }

    /// Reads every variable through `lookup` (`None`: unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let vars = Vars(&lookup);
        let settings = Self {
            storage_backend: vars.choice(
                env::STORAGE_BACKEND,
                "memory",
                &[
                    ("memory", StorageBackend::Memory),
                    ("redis", StorageBackend::Redis),
                    ("postgres", StorageBackend::Postgres),
                ],
            )?,
            cache_enabled: vars.boolean(env::CACHE_ENABLED, true)?,
            cache_ttl_seconds: vars.number(env::CACHE_TTL, 300, 1..=86_400)?,
            redis_host: vars.text(env::REDIS_HOST, "localhost")?,
            redis_port: vars.number(env::REDIS_PORT, 6379, 1..=65_535)?,
            trust_initial_score: vars.number(env::TRUST_INITIAL_SCORE, 800, 0..=1000)?,
            trust_decay_rate: vars.real(env::TRUST_DECAY_RATE, 2.0, 0.0, 1000.0)?,
            trust_decay_floor: vars.number(env::TRUST_DECAY_FLOOR, 100, 0..=1000)?,
            trust_min_threshold: vars.number(env::TRUST_MIN_THRESHOLD, 300, 0..=1000)?,
            delegation_max_depth: vars.number(env::DELEGATION_MAX_DEPTH, 5, 0..=16)?,
            default_policy: vars.preset(env::GOVERNANCE_DEFAULT_POLICY, "standard")?,
            shadow_mode: vars.boolean(env::GOVERNANCE_SHADOW_MODE, false)?,
            audit_retention_days: vars.number(
                env::GOVERNANCE_AUDIT_RETENTION_DAYS,
                90,
                1..=3650,
            )?,
            log_level: vars.log_level()?,
            log_format: vars.log_format()?,
            otel_enabled: vars.boolean(env::OTEL_ENABLED, false)?,
            otel_endpoint: vars.url(env::OTEL_ENDPOINT, "http://otel-collector:4317")?,
            policy: vars.preset(env::POLICY, "standard")?,
            agent_private_key: vars.optional(env::AGENT_PRIVATE_KEY),
            proxy_url: vars.url(env::PROXY_URL, crate::names::objects::PROXY_URL)?,
        };
        settings.check_trust_order()?;
        Ok(settings)
    }

    /// The same order the TrustPolicy schema enforces: floor < threshold ≤ initial.
    fn check_trust_order(&self) -> Result<(), SettingsError> {
        if self.trust_decay_floor >= self.trust_min_threshold {
            return Err(SettingsError {
                variable: env::TRUST_DECAY_FLOOR,
                value: self.trust_decay_floor.to_string(),
                expected: format!(
                    "a value below {}={}",
                    env::TRUST_MIN_THRESHOLD,
                    self.trust_min_threshold
                ),
            });
        }
        if self.trust_min_threshold > self.trust_initial_score {
            return Err(SettingsError {
                variable: env::TRUST_MIN_THRESHOLD,
                value: self.trust_min_threshold.to_string(),
                expected: format!(
                    "a value not above {}={}",
                    env::TRUST_INITIAL_SCORE,
                    self.trust_initial_score
                ),
            });
        }
        Ok(())
    }
}

struct Vars<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    /// The trimmed value, or `None` when unset or empty.
    fn optional(&self, name: &'static str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn error(name: &'static str, value: &str, expected: impl Into<String>) -> SettingsError {
        SettingsError {
            variable: name,
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    fn text(&self, name: &'static str, default: &str) -> Result<String, SettingsError> {
        let value = self.optional(name).unwrap_or_else(|| default.to_owned());
        if value.chars().any(char::is_whitespace) {
            return Err(Self::error(name, &value, "a value without spaces"));
        }
        Ok(value)
    }

    fn url(&self, name: &'static str, default: &str) -> Result<String, SettingsError> {
        let value = self.text(name, default)?;
        let rest = value
            .strip_prefix("http://")
            .or_else(|| value.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(value),
            _ => Err(Self::error(
                name,
                &value,
                "an http:// or https:// URL with a host",
            )),
        }
    }

    fn log_level(&self) -> Result<LogLevel, SettingsError> {
        self.choice(
            env::LOG_LEVEL,
            "info",
            &[
                ("trace", LogLevel::Trace),
                ("debug", LogLevel::Debug),
                ("info", LogLevel::Info),
                ("warn", LogLevel::Warn),
                ("warning", LogLevel::Warn),
                ("error", LogLevel::Error),
            ],
        )
    }

    fn log_format(&self) -> Result<LogFormat, SettingsError> {
        self.choice(
            env::LOG_FORMAT,
            "json",
            &[("json", LogFormat::Json), ("text", LogFormat::Text)],
        )
    }

    fn choice<T: Copy>(
        &self,
        name: &'static str,
        default: &str,
        choices: &[(&str, T)],
    ) -> Result<T, SettingsError> {
        let value = self.optional(name).unwrap_or_else(|| default.to_owned());
        let lowered = value.to_ascii_lowercase();
        choices
            .iter()
            .find(|(key, _)| *key == lowered)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let keys: Vec<&str> = choices.iter().map(|(key, _)| *key).collect();
                Self::error(name, &value, format!("one of {}", keys.join(", ")))
            })
    }

    fn preset(&self, name: &'static str, default: &str) -> Result<PresetName, SettingsError> {
        self.choice(
            name,
            default,
            &[
                ("standard", PresetName::Standard),
                ("strict", PresetName::Strict),
                ("permissive", PresetName::Permissive),
            ],
        )
    }

    fn boolean(&self, name: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.optional(name) {
            None => Ok(default),
            Some(value) => match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(Self::error(name, &value, "true or false")),
            },
        }
    }

    fn number<T>(
        &self,
        name: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, SettingsError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(value) = self.optional(name) else {
            return Ok(default);
        };
        match value.parse::<T>() {
            Ok(parsed) if range.contains(&parsed) => Ok(parsed),
            _ => Err(Self::error(
                name,
                &value,
                format!("a whole number from {} to {}", range.start(), range.end()),
            )),
        }
    }

    fn real(
        &self,
        name: &'static str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Result<f64, SettingsError> {
        let Some(value) = self.optional(name) else {
            return Ok(default);
        };
        match value.parse::<f64>() {
            Ok(parsed) if parsed.is_finite() && (min..=max).contains(&parsed) => Ok(parsed),
            _ => Err(Self::error(
                name,
                &value,
                format!("a number from {min} to {max}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    /// The ConfigMap of the seed's deployment guide, verbatim.
    const SEED_CONFIG_MAP: [(&str, &str); 18] = [
        ("AGENTMESH_STORAGE_BACKEND", "redis"),
        ("AGENTMESH_CACHE_ENABLED", "true"),
        ("AGENTMESH_CACHE_TTL", "300"),
        ("AGENTMESH_REDIS_HOST", "agentmesh-redis-master"),
        ("AGENTMESH_REDIS_PORT", "6379"),
        ("AGENTMESH_TRUST_INITIAL_SCORE", "800"),
        ("AGENTMESH_TRUST_DECAY_RATE", "2.0"),
        ("AGENTMESH_TRUST_DECAY_FLOOR", "100"),
        ("AGENTMESH_TRUST_MIN_THRESHOLD", "300"),
        ("AGENTMESH_DELEGATION_MAX_DEPTH", "5"),
        ("AGENTMESH_GOVERNANCE_DEFAULT_POLICY", "standard"),
        ("AGENTMESH_GOVERNANCE_SHADOW_MODE", "false"),
        ("AGENTMESH_GOVERNANCE_AUDIT_RETENTION_DAYS", "90"),
        ("AGENTMESH_LOG_LEVEL", "INFO"),
        ("AGENTMESH_LOG_FORMAT", "json"),
        ("AGENTMESH_OTEL_ENABLED", "true"),
        ("AGENTMESH_OTEL_ENDPOINT", "http://otel-collector:4317"),
        ("AGENTMESH_POLICY", "strict"),
    ];

    #[test]
    fn the_seed_config_map_parses_to_what_it_says() {
        let settings = parse(&SEED_CONFIG_MAP).unwrap();
        assert_eq!(settings.storage_backend, StorageBackend::Redis);
        assert!(settings.cache_enabled);
        assert_eq!(settings.cache_ttl_seconds, 300);
        assert_eq!(settings.redis_host, "agentmesh-redis-master");
        assert_eq!(settings.redis_port, 6379);
        assert_eq!(
            (
                settings.trust_initial_score,
                settings.trust_decay_floor,
                settings.trust_min_threshold
            ),
            (800, 100, 300)
        );
        assert_eq!(settings.trust_decay_rate, 2.0);
        assert_eq!(settings.delegation_max_depth, 5);
        assert_eq!(settings.default_policy, PresetName::Standard);
        assert!(!settings.shadow_mode);
        assert_eq!(settings.audit_retention_days, 90);
        assert_eq!(settings.log_level, LogLevel::Info);
        assert_eq!(settings.log_format, LogFormat::Json);
        assert!(settings.otel_enabled);
        assert_eq!(settings.policy, PresetName::Strict);
    }

    #[test]
    fn unset_variables_take_the_seed_defaults() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.storage_backend, StorageBackend::Memory);
        assert_eq!(settings.trust_initial_score, 800);
        assert_eq!(settings.trust_decay_rate, 2.0);
        assert_eq!(settings.proxy_url, "http://localhost:8081");
        assert_eq!(settings.agent_private_key, None);
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_variable() {
        let cases = [
            ("AGENTMESH_STORAGE_BACKEND", "mysql"),
            ("AGENTMESH_CACHE_ENABLED", "maybe"),
            ("AGENTMESH_CACHE_TTL", "-1"),
            ("AGENTMESH_REDIS_PORT", "70000"),
            ("AGENTMESH_TRUST_INITIAL_SCORE", "1001"),
            ("AGENTMESH_TRUST_DECAY_RATE", "fast"),
            ("AGENTMESH_TRUST_DECAY_RATE", "NaN"),
            ("AGENTMESH_DELEGATION_MAX_DEPTH", "2.5"),
            ("AGENTMESH_GOVERNANCE_DEFAULT_POLICY", "lenient"),
            ("AGENTMESH_GOVERNANCE_AUDIT_RETENTION_DAYS", "0"),
            ("AGENTMESH_LOG_LEVEL", "loud"),
            ("AGENTMESH_LOG_FORMAT", "xml"),
            ("AGENTMESH_OTEL_ENDPOINT", "otel-collector:4317"),
            ("AGENTMESH_POLICY", "none"),
            ("AGENTMESH_PROXY_URL", "localhost:8081"),
            ("AGENTMESH_REDIS_HOST", "two words"),
        ];
        for (name, value) in cases {
            let error = parse(&[(name, value)]).expect_err(&format!("{name}={value} accepted"));
            assert_eq!(error.variable, name);
            assert!(
                error.to_string().starts_with(&format!("{name}=")),
                "{error}"
            );
        }
    }

    #[test]
    fn the_trust_settings_must_be_ordered() {
        let error = parse(&[("AGENTMESH_TRUST_DECAY_FLOOR", "300")]).unwrap_err();
        assert_eq!(error.variable, "AGENTMESH_TRUST_DECAY_FLOOR");
        let error = parse(&[("AGENTMESH_TRUST_MIN_THRESHOLD", "900")]).unwrap_err();
        assert_eq!(error.variable, "AGENTMESH_TRUST_MIN_THRESHOLD");
    }

    #[test]
    fn every_seed_variable_is_read() {
        let read = std::cell::RefCell::new(Vec::new());
        Settings::from_lookup(|name| {
            read.borrow_mut().push(name.to_owned());
            None
        })
        .unwrap();
        for name in env::ALL {
            assert!(
                read.borrow().iter().any(|r| r == name),
                "{name} is never read"
            );
        }
    }
}
