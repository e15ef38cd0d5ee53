//! The label selector of `twinflash rollout create --selector`, in kubectl syntax
//! (`a=b,c!=d,e in (f,g),h notin (i),j,!k`), parsed into a [`DeviceSelector`]. Hand-written: kube
//! has a selector type but no parser of kubectl's string form.

use crate::types::{DeviceSelector, SelectorRequirement};

/// Parses a kubectl-style label selector; an empty string selects every Device.
pub fn parse_selector(s: &str) -> Result<DeviceSelector, String> {
    let mut sel = DeviceSelector::default();
    for term in split_terms(s) {
        let t = term.trim();
        if t.is_empty() {
            continue;
        }
        let req =
            |key: &str, op: &str, values: Vec<String>| -> Result<SelectorRequirement, String> {
                let key = key.trim();
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(format!("selector term {t:?} has no valid key"));
                }
                Ok(SelectorRequirement {
                    key: key.to_owned(),
                    operator: op.to_owned(),
                    values,
                })
            };
        if let Some((k, rest)) = t.split_once(" notin ").or_else(|| t.split_once(" in ")) {
            let op = if t.contains(" notin ") { "NotIn" } else { "In" };
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("selector term {t:?}: values go in parentheses"))?;
            let values: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            sel.match_expressions.push(req(k, op, values)?);
        } else if let Some((k, v)) = t.split_once("!=") {
            sel.match_expressions
                .push(req(k, "NotIn", vec![v.trim().to_owned()])?);
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            let k = req(k, "In", Vec::new())?.key;
            sel.match_labels.insert(k, v.trim().to_owned());
        } else if let Some(k) = t.strip_prefix('!') {
            sel.match_expressions
                .push(req(k, "DoesNotExist", Vec::new())?);
        } else {
            sel.match_expressions.push(req(t, "Exists", Vec::new())?);
        }
    }
    sel.to_selector()?;
    Ok(sel)
}

/// Splits at commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_like_kubectl() {
        let s = parse_selector("fleet=blinky, tier in (canary, edge),zone!=eu,hw,!legacy").unwrap();
        assert_eq!(s.match_labels["fleet"], "blinky");
        let ops: Vec<(&str, &str, usize)> = s
            .match_expressions
            .iter()
            .map(|r| (r.key.as_str(), r.operator.as_str(), r.values.len()))
            .collect();
        assert_eq!(
            ops,
            [
                ("tier", "In", 2),
                ("zone", "NotIn", 1),
                ("hw", "Exists", 0),
                ("legacy", "DoesNotExist", 0)
            ]
        );
        let labels = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(s.matches(&labels(&[
            ("fleet", "blinky"),
            ("tier", "edge"),
            ("hw", "x")
        ])));
        assert!(!s.matches(&labels(&[
            ("fleet", "blinky"),
            ("tier", "edge"),
            ("hw", "x"),
            ("legacy", "1")
        ])));
        assert!(!s.matches(&labels(&[
            ("fleet", "blinky"),
            ("tier", "lab"),
            ("hw", "x")
        ])));
        assert_eq!(parse_selector("").unwrap(), DeviceSelector::default());
        assert!(parse_selector("tier in canary").is_err());
        assert!(parse_selector("=x").is_err());
    }
}
