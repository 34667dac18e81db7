use std::fmt;

/// The longest name Gantry accepts, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A trimmed, non-empty display name of a named resource (space,
/// integration, stack, API key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("`name` must not be empty")]
    Empty,
    #[error("`name` is {0} characters long; at most {MAX_NAME_CHARS} are allowed")]
    TooLong(usize),
    #[error("`name` must not contain control characters")]
    ControlCharacter,
    #[error("`name` {0:?} has no ASCII letter or digit to build an id from")]
    NoSlug(String),
    #[error(
        "`id` {0:?} is not a valid id: use lowercase ASCII letters, digits and single dashes, at most {MAX_NAME_CHARS} characters, no leading or trailing dash"
    )]
    BadId(String),
}

impl Name {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        let chars = trimmed.chars().count();
        if chars > MAX_NAME_CHARS {
            return Err(NameError::TooLong(chars));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id made from this name (see [`Slug::from_name`]).
    pub fn slug(&self) -> Result<Slug, NameError> {
        Slug::from_name(&self.0)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a named resource: lowercase ASCII letters, digits and single
/// dashes, neither starting nor ending with a dash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(String);

impl Slug {
    /// Makes the id of a name: ASCII letters are lowercased, digits kept,
    /// every other run of characters becomes one `-`, and dashes at either
    /// end are trimmed. `"Prod  Network (EU)"` becomes `prod-network-eu`.
    pub fn from_name(name: &str) -> Result<Self, NameError> {
        let mut slug = String::with_capacity(name.len());
        let mut pending_dash = false;
        for c in name.chars() {
            if c.is_ascii_alphanumeric() {
                if pending_dash && !slug.is_empty() {
                    slug.push('-');
                }
                pending_dash = false;
                slug.push(c.to_ascii_lowercase());
            } else {
                pending_dash = true;
            }
        }
        if slug.is_empty() {
            return Err(NameError::NoSlug(name.to_owned()));
        }
        slug.truncate(MAX_NAME_CHARS);
        let trimmed_len = slug.trim_end_matches('-').len();
        slug.truncate(trimmed_len);
        Ok(Self(slug))
    }

    /// Accepts an id given explicitly, which must already be in slug form.
    pub fn parse(id: &str) -> Result<Self, NameError> {
        match Self::from_name(id) {
            Ok(slug) if slug.0 == id => Ok(slug),
            _ => Err(NameError::BadId(id.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slug(s: &str) -> String {
        Slug::from_name(s)
            .map(Slug::into_string)
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn slugs_follow_the_design_rules() {
        assert_eq!(slug("Prod  Network (EU)"), "prod-network-eu");
        assert_eq!(slug("  --GitLab.com--  "), "gitlab-com");
        assert_eq!(slug("Équipe Réseau"), "quipe-r-seau");
        assert_eq!(slug("a_b__c"), "a-b-c");
        assert_eq!(slug("123"), "123");
        assert!(slug("—").starts_with("error"));
    }

    #[test]
    fn long_names_make_ids_without_a_trailing_dash() {
        let name = format!("{}-{}", "a".repeat(MAX_NAME_CHARS - 1), "b".repeat(10));
        let id = slug(&name);
        assert_eq!(id.len(), MAX_NAME_CHARS - 1);
        assert!(!id.ends_with('-'));
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(
            Name::parse("  Root space ").map(|n| n.to_string()),
            Ok("Root space".into())
        );
        assert_eq!(Name::parse("   "), Err(NameError::Empty));
        assert_eq!(Name::parse("a\nb"), Err(NameError::ControlCharacter));
        assert!(matches!(
            Name::parse(&"x".repeat(101)),
            Err(NameError::TooLong(101))
        ));
    }

    #[test]
    fn explicit_ids_must_already_be_slugs() {
        assert!(Slug::parse("team-a").is_ok());
        assert!(Slug::parse("Team-A").is_err());
        assert!(Slug::parse("-team").is_err());
        assert!(Slug::parse("team--a").is_err());
    }
}
