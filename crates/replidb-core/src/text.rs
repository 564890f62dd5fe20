//! Wording shared by every command's output.

/// `n` followed by the noun, singular for exactly one: `count(1, "leader",
/// "leaders")` is `1 leader`, `count(3, ...)` is `3 leaders` (and `0
/// leaders`).
pub fn count(n: impl Into<u64>, singular: &str, plural: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// [`count`] for nouns whose plural adds an `s` (`1 rewind`, `2 rewinds`).
pub fn count_s(n: impl Into<u64>, singular: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {singular}")
    } else {
        format!("{n} {singular}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_everything_else_plural() {
        assert_eq!(count_s(1u64, "leader"), "1 leader");
        assert_eq!(count_s(0u64, "leader"), "0 leaders");
        assert_eq!(count_s(2u64, "time"), "2 times");
        assert_eq!(count(1u64, "entry", "entries"), "1 entry");
        assert_eq!(count(5u32, "entry", "entries"), "5 entries");
    }
}
