//! JSON (default) or table output, like `az -o table`.

use serde_json::Value;

pub fn print(v: &Value, format: &str) {
    if format != "table" {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let rows: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) if o.get("value").is_some_and(|x| x.is_array()) => o["value"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        other => vec![other],
    };
    let mut cols: Vec<String> = vec![];
    for r in &rows {
        if let Value::Object(o) = r {
            for (k, val) in o {
                if !matches!(val, Value::Object(_) | Value::Array(_)) && !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
            if let Some(Value::Object(p)) = o.get("properties") {
                for (k, val) in p {
                    if !matches!(val, Value::Object(_) | Value::Array(_)) && !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
        }
    }
    let cell = |r: &Value, c: &str| -> String {
        let x = r
            .get(c)
            .or_else(|| r.get("properties").and_then(|p| p.get(c)));
        match x {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(o) => o.to_string(),
        }
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line: Vec<String> = cols
        .iter()
        .zip(&widths)
        .map(|(c, w)| format!("{:w$}", upper(c)))
        .collect();
    println!("{}", line.join("  ").trim_end());
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for r in rows {
        let line: Vec<String> = cols
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{:w$}", cell(r, c)))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn upper(c: &str) -> String {
    let mut s = c.to_string();
    if let Some(f) = s.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    s
}
