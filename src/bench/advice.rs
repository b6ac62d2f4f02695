//! What a report's figures most likely mean, when rejections dominate: the
//! cause of each rejection status under load, and the flag that changes it.

use std::collections::BTreeMap;

/// Rejections above this share of the sent messages get an explanation.
const DOMINANT_SHARE: f64 = 0.2;

/// One line per rejection status that took more than `DOMINANT_SHARE` of
/// the sent messages, naming its likely cause and the flag to change.
pub fn explain(rejections: &BTreeMap<String, u64>, sent: u64, threads: usize) -> Vec<String> {
    let mut notes = Vec::new();
    if sent == 0 {
        return notes;
    }
    for (status, n) in rejections {
        let share = *n as f64 / sent as f64;
        if share < DOMINANT_SHARE {
            continue;
        }
        let pct = share * 100.0;
        let why = match status.as_str() {
            "ORDER_ERROR" => format!(
                "{pct:.0}% of sends were ORDER_ERROR: a writer had not yet received more \
                 than the server's --order commits of its thread. All writers share {} \
                 thread(s), so each one's news lags the others' writes; spread the load \
                 with --threads, or raise the server's --order",
                threads
            ),
            "NUMERICAL_ERROR" => format!(
                "{pct:.0}% of sends were NUMERICAL_ERROR: some client had not acknowledged \
                 the server's --numerical commits of a thread; lower --rate, spread it with \
                 --threads, or raise the server's --numerical"
            ),
            "STALENESS" => format!(
                "{pct:.0}% of sends were STALENESS: messages arrived older than the staleness \
                 bound (the generator or the server is behind its schedule, or the clocks \
                 differ); lower --rate or raise the server's --staleness"
            ),
            "CLIENT_ERROR" => format!(
                "{pct:.0}% of sends were CLIENT_ERROR: the server refused them as malformed; \
                 is --size above the server's --max-message-bytes?"
            ),
            "INTERNAL_ERROR" => format!(
                "{pct:.0}% of sends were INTERNAL_ERROR: the server could not store them; \
                 see its log and /readyz"
            ),
            _ => continue,
        };
        notes.push(why);
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dominant_order_error_names_threads_and_order() {
        let r = BTreeMap::from([("ORDER_ERROR".to_owned(), 650), ("STALENESS".to_owned(), 3)]);
        let notes = explain(&r, 1000, 1);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("65% of sends were ORDER_ERROR"));
        assert!(notes[0].contains("--threads") && notes[0].contains("--order"));
        assert!(explain(&r, 0, 1).is_empty());
    }
}
