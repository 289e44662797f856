//! Container names: checked as Docker checks them, or made up as Docker
//! makes them up (an adjective and a surname).

use super::EngineError;

const ADJECTIVES: [&str; 24] = [
    "admiring",
    "brave",
    "busy",
    "calm",
    "clever",
    "eager",
    "elated",
    "focused",
    "gallant",
    "happy",
    "jolly",
    "keen",
    "kind",
    "loving",
    "modest",
    "nifty",
    "optimistic",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "vibrant",
    "zealous",
];

const SURNAMES: [&str; 24] = [
    "agnesi", "babbage", "bohr", "curie", "darwin", "einstein", "euler", "feynman", "gauss",
    "hopper", "hypatia", "kepler", "lamarr", "lovelace", "meitner", "newton", "noether", "pascal",
    "ritchie", "shannon", "thompson", "turing", "wozniak", "yalow",
];

/// Checks a name the user gave: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate(name: &str) -> Result<(), EngineError> {
    let bytes = name.as_bytes();
    let ok = bytes.len() >= 2
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

/// A random name like `happy_turing`.
pub fn generate() -> String {
    let mut bytes = [0u8; 2];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    format!(
        "{}_{}",
        ADJECTIVES[bytes[0] as usize % ADJECTIVES.len()],
        SURNAMES[bytes[1] as usize % SURNAMES.len()]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_dockers() {
        for good in ["web", "a1", "my_app.v2-x"] {
            validate(good).unwrap();
        }
        for bad in ["", "a", "-x", "_x", "a b", "a/b", "ü1"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        validate(&generate()).unwrap();
    }
}
