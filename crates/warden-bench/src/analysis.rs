//! Statement analysis cost, cached and uncached: read from the output of
//! `cargo bench -p warden-policy --bench decide` (criterion), which bench/run runs first.

use serde::Serialize;

#[derive(Debug, Serialize, PartialEq)]
pub struct AnalysisCost {
    /// e.g. `cached/point select`
    pub name: String,
    /// criterion's point estimate of the mean, in microseconds
    pub micros: f64,
}

/// Lines such as `cached/point select    time:   [1.0 µs 1.1 µs 1.2 µs]`; a long name may stand on
/// the line before its `time:`.
pub fn parse_criterion(text: &str) -> Vec<AnalysisCost> {
    let mut out = Vec::new();
    let mut pending_name = String::new();
    for line in text.lines() {
        let Some(at) = line.find("time:") else {
            let t = line.trim();
            if !t.is_empty() && !t.starts_with(|c: char| c.is_whitespace()) && !line.starts_with(' ') {
                pending_name = t.to_string();
            }
            continue;
        };
        let name = match line[..at].trim() {
            "" => std::mem::take(&mut pending_name),
            n => n.to_string(),
        };
        let values = line[at..].trim_start_matches("time:").trim().trim_matches(['[', ']']);
        let tokens: Vec<&str> = values.split_whitespace().collect();
        // [low unit mid unit high unit]
        if tokens.len() == 6 {
            if let (Ok(v), Some(scale)) = (tokens[2].parse::<f64>(), unit_to_micros(tokens[3])) {
                out.push(AnalysisCost {
                    name,
                    micros: v * scale,
                });
            }
        }
    }
    out
}

fn unit_to_micros(unit: &str) -> Option<f64> {
    match unit {
        "ps" => Some(1e-6),
        "ns" => Some(1e-3),
        "µs" | "us" => Some(1.0),
        "ms" => Some(1e3),
        "s" => Some(1e6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_lines() {
        let text = "Benchmarking cached/point select: Analyzing\n\
            cached/point select     time:   [812.10 ns 815.55 ns 819.30 ns]\n\
            uncached/cte + aggregate\n                        time:   [41.512 µs 41.800 µs 42.1 µs]\n\
            Found 3 outliers\n";
        let got = parse_criterion(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "cached/point select");
        assert!((got[0].micros - 0.81555).abs() < 1e-9);
        assert_eq!(got[1].name, "uncached/cte + aggregate");
        assert!((got[1].micros - 41.8).abs() < 1e-9);
    }
}
