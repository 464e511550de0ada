//! An error and its sources on one line, the form both binaries print before they exit.

/// "outer: inner: innermost" on one line. A source whose message the text already holds
/// (an outer message that inlines its source) is not repeated; line breaks become spaces.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Step {
        #[error("cgroups")]
        Cgroups(#[source] Write),
        #[error("Cannot apply the ruleset: {0}")]
        Inlined(#[from] std::io::Error),
        #[error("config:\nline 2")]
        TwoLines(#[source] std::io::Error),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("Cannot write {0}")]
    struct Write(&'static str, #[source] std::io::Error);

    fn einval() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EINVAL)
    }

    #[test]
    fn nested_sources_read_outer_to_innermost() {
        let e = Step::Cgroups(Write("pids.max", einval()));
        assert_eq!(
            error_chain(&e),
            "cgroups: Cannot write pids.max: Invalid argument (os error 22)"
        );
    }

    #[test]
    fn a_source_the_message_already_inlines_is_not_repeated() {
        let e = Step::Inlined(einval());
        assert_eq!(
            error_chain(&e),
            "Cannot apply the ruleset: Invalid argument (os error 22)"
        );
    }

    #[test]
    fn the_chain_is_one_line() {
        let e = Step::TwoLines(einval());
        assert_eq!(
            error_chain(&e),
            "config: line 2: Invalid argument (os error 22)"
        );
    }

    #[test]
    fn an_error_without_source_is_its_message() {
        assert_eq!(
            error_chain(&std::fmt::Error),
            "an error occurred when formatting an argument"
        );
    }
}
