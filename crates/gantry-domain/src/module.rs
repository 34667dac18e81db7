//! Module versions from tags: `1.2.3` or `v1.2.3`, with an optional
//! pre-release (`-rc.1`); build metadata (`+build.5`) is dropped.

/// The version a tag names, or `None` for a tag that is not a semantic
/// version.
pub fn version_of_tag(tag: &str) -> Option<String> {
    let raw = tag.strip_prefix('v').unwrap_or(tag);
    let mut version = semver::Version::parse(raw).ok()?;
    version.build = semver::BuildMetadata::EMPTY;
    Some(version.to_string())
}

#[cfg(test)]
mod tests {
    use super::version_of_tag;

    #[test]
    fn semantic_version_tags_and_others() {
        assert_eq!(version_of_tag("v1.2.3").as_deref(), Some("1.2.3"));
        assert_eq!(version_of_tag("1.2.3").as_deref(), Some("1.2.3"));
        assert_eq!(version_of_tag("v2.0.0-rc.1").as_deref(), Some("2.0.0-rc.1"));
        assert_eq!(version_of_tag("1.0.0+build.7").as_deref(), Some("1.0.0"));
        for not in ["release-1", "v1.2", "1", "latest", "v1.2.3.4", ""] {
            assert_eq!(version_of_tag(not), None, "{not}");
        }
    }
}
