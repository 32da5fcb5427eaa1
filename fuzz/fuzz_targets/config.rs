//! The config loader on arbitrary text: never panics, and whatever it
//! accepts, its effective form (`wsbridge check`) loads back to an equal
//! configuration that prints the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsbridge::Config;

fuzz_target!(|text: &str| {
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    let effective = config.to_toml();
    let again = Config::from_toml(&effective)
        .unwrap_or_else(|e| panic!("the effective config does not load: {e}\n{effective}"));
    assert_eq!(again.to_toml(), effective);
    assert_eq!(again, config);
});
