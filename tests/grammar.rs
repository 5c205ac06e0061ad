//! Tests of the rule-language grammar: each construct, the default policy, and error messages.

use complaintd::rules::parse::parse_file;
use complaintd::rules::SourceMap;

#[test]
fn every_default_policy_file_parses() {
    let mut paths: Vec<_> = std::fs::read_dir("rules")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 5);
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut sources = SourceMap::new();
        let id = sources.add(&path, text.clone());
        if let Err(d) = parse_file(id, &text) {
            panic!("{}", d.render(&sources));
        }
    }
}
