//! Streaming redaction: secret values never reach the log, also when one
//! is split across two chunks of output. The redactor holds back the last
//! `longest secret − 1` bytes of the stream until it knows they are not
//! the start of a secret.

/// What replaces a secret in the log.
pub const MASK: &str = "[REDACTED]";

pub struct Redactor {
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
    keep: usize,
}

impl Redactor {
    /// Redacts these values; empty ones are ignored. Longer secrets are
    /// matched first, so one that contains another is masked whole.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|secret| !secret.is_empty())
            .map(|secret| secret.as_bytes().to_vec())
            .collect();
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        let keep = secrets.first().map_or(0, |longest| longest.len() - 1);
        Self {
            secrets,
            held: Vec::new(),
            keep,
        }
    }

    /// Takes the next chunk of output and returns what can be logged now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(chunk);
        let (out, rest) = self.scan(false);
        self.held = rest;
        out
    }

    /// The end of the stream: everything held back, redacted.
    pub fn finish(&mut self) -> Vec<u8> {
        let (out, _) = self.scan(true);
        self.held.clear();
        out
    }

    /// Masks every secret in `held`; returns the bytes that are safe to
    /// emit and those to hold back (a possible start of a secret).
    fn scan(&self, at_end: bool) -> (Vec<u8>, Vec<u8>) {
        let data = &self.held;
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0;
        while at < data.len() {
            if let Some(secret) = self
                .secrets
                .iter()
                .find(|secret| data[at..].starts_with(secret))
            {
                out.extend_from_slice(MASK.as_bytes());
                at += secret.len();
                continue;
            }
            // Near the end, a secret may still be arriving.
            if !at_end
                && data.len() - at <= self.keep
                && self.secrets.iter().any(|s| s.starts_with(&data[at..]))
            {
                return (out, data[at..].to_vec());
            }
            out.push(data[at]);
            at += 1;
        }
        (out, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_in_chunks(secrets: &[&str], text: &str, cuts: &[usize]) -> String {
        let mut redactor = Redactor::new(secrets.iter().copied());
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&text.len())) {
            let cut = cut.clamp(start, text.len());
            out.extend(redactor.push(&text.as_bytes()[start..cut]));
            start = cut;
        }
        out.extend(redactor.finish());
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked() {
        let text = "token=glpat-abc123 and again glpat-abc123!";
        let expected = "token=[REDACTED] and again [REDACTED]!";
        for cut in 0..text.len() {
            assert_eq!(
                redact_in_chunks(&["glpat-abc123"], text, &[cut]),
                expected,
                "cut at {cut}"
            );
        }
        assert_eq!(
            redact_in_chunks(
                &["glpat-abc123"],
                text,
                &(0..text.len()).collect::<Vec<_>>()
            ),
            expected
        );
    }

    #[test]
    fn overlapping_secrets_mask_the_longer_one() {
        assert_eq!(
            redact_in_chunks(&["abc", "abcdef"], "xabcdefx abc", &[3]),
            "x[REDACTED]x [REDACTED]"
        );
        assert_eq!(redact_in_chunks(&[""], "nothing", &[2]), "nothing");
    }

    /// A property test: for random texts with secrets planted at random
    /// places and random chunk boundaries, no secret survives and the rest
    /// of the text is unchanged.
    #[test]
    fn random_streams_never_leak() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let secrets = ["s3cr3t-VALUE", "tok", "AKIA0000SECRET"];
        for _ in 0..3000 {
            let mut text = String::new();
            let mut expected = String::new();
            for _ in 0..rng.gen_range(0..12) {
                if rng.gen_bool(0.3) {
                    let secret = secrets[rng.gen_range(0..secrets.len())];
                    text.push_str(secret);
                    expected.push_str(MASK);
                } else {
                    let filler: String = (0..rng.gen_range(0..6))
                        .map(|_| char::from(rng.gen_range(b'a'..=b'f')))
                        .collect();
                    text.push_str(&filler);
                    expected.push_str(&filler);
                }
            }
            let mut cuts: Vec<usize> = (0..rng.gen_range(0..6))
                .map(|_| rng.gen_range(0..=text.len()))
                .collect();
            cuts.sort_unstable();
            let out = redact_in_chunks(&secrets, &text, &cuts);
            for secret in secrets {
                assert!(
                    !out.contains(secret),
                    "{secret} leaked from {text:?} cut at {cuts:?}: {out}"
                );
            }
            // Fillers use a–f only, so they never form a secret.
            assert_eq!(out, expected, "{text:?} {cuts:?}");
        }
    }
}
