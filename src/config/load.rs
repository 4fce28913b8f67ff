//! Loading the layers: bundled defaults, `--config FILE`, `CSW__…`
//! variables, then the short aliases; the config crate's errors become one
//! line naming the key.

use std::{collections::HashMap, path::Path};

use super::{ConfigError, DEFAULT_TOML, ENV_ALIASES, Settings};

impl Settings {
    /// Loads the layers from the real process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Settings::load_from(file, &env)
    }

    /// Loads the layers with an explicit environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.display().to_string(),
                    message: "not found or not a file; pass an existing TOML file to --config"
                        .into(),
                });
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        // `CSW__SECTION__KEY`: keys are lower-cased by the config crate.
        let csw: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("CSW__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("CSW")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(csw)),
        );
        for (alias, key) in ENV_ALIASES {
            if let Some(value) = env.get(*alias) {
                builder = builder
                    .set_override(*key, value.clone())
                    .map_err(|e| ConfigError::Load(e.to_string()))?;
            }
        }
        let raw = builder.build().map_err(|e| describe(e, file))?;
        let settings: Settings = raw.try_deserialize().map_err(|e| describe(e, file))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults only, for tests and the demo.
    pub fn defaults() -> Settings {
        Settings::load_from(None, &HashMap::new()).expect("bundled defaults are valid")
    }
}

/// Turns the config crate's messages into one line naming the key.
fn describe(e: config::ConfigError, file: Option<&Path>) -> ConfigError {
    match e {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::invalid(&key, format!("expected {expected}, got {unexpected}")),
        config::ConfigError::NotFound(key) => ConfigError::invalid(&key, "missing"),
        config::ConfigError::FileParse { cause, .. } => ConfigError::File {
            path: file.map(|p| p.display().to_string()).unwrap_or_default(),
            message: format!("not valid TOML: {cause}"),
        },
        other => {
            // serde messages look like "unknown variant `x`, expected ... for key `a.b`"
            let text = other.to_string();
            match text.rsplit_once(" for key `") {
                Some((msg, key)) => ConfigError::invalid(key.trim_end_matches('`'), msg),
                None => ConfigError::Load(text),
            }
        }
    }
}
