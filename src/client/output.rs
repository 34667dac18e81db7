//! How the client prints answers: the server's JSON as is with `--json`,
//! otherwise an aligned table (lists) or aligned `field: value` lines (one
//! resource).

use serde_json::Value;

/// One column of a table, or one line of a resource: a header and how to
/// get the cell from the resource's JSON.
#[derive(Clone, Copy)]
pub enum Column {
    /// The value at a JSON pointer, such as `/token/user/username`.
    Field(&'static str, &'static str),
    /// A value computed from the whole resource.
    With(&'static str, fn(&Value) -> String),
}

/// The columns most resources share.
pub const ID: Column = Column::Field("id", "/id");
pub const NAME: Column = Column::Field("name", "/name");
pub const SPACE: Column = Column::Field("space", "/space");
pub const CREATED: Column = Column::Field("created", "/created_at");

impl Column {
    fn header(&self) -> &'static str {
        match self {
            Self::Field(header, _) | Self::With(header, _) => header,
        }
    }

    fn cell(&self, item: &Value) -> String {
        match self {
            Self::Field(_, pointer) => text(item.pointer(pointer).unwrap_or(&Value::Null)),
            Self::With(_, cell) => cell(item),
        }
    }
}

/// The table columns of a list: the fields of one resource named by
/// `headers`, in that order, so a column and its field are defined once.
pub fn pick(fields: &[Column], headers: &[&str]) -> Vec<Column> {
    headers
        .iter()
        .filter_map(|header| fields.iter().find(|field| field.header() == *header))
        .copied()
        .collect()
}

/// A JSON value as a table cell: `-` for null or empty, `yes`/`no`,
/// lists joined with commas, and roles as `admin@root`.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        Value::Object(map) => match (map.get("role"), map.get("space")) {
            (Some(Value::String(role)), Some(Value::String(space))) => format!("{role}@{space}"),
            _ => value.to_string(),
        },
    }
}

/// Pads every column but the last to its widest cell.
pub fn table(columns: &[Column], items: &[Value]) -> String {
    let rows: Vec<Vec<String>> =
        std::iter::once(columns.iter().map(|c| c.header().to_uppercase()).collect())
            .chain(
                items
                    .iter()
                    .map(|item| columns.iter().map(|c| one_line(c.cell(item))).collect()),
            )
            .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(
                    ' ',
                    widths[i] - cell.chars().count() + 2,
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `field: value` lines, the values aligned.
pub fn fields(columns: &[Column], item: &Value) -> String {
    let width = columns
        .iter()
        .map(|c| c.header().chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for column in columns {
        let header = column.header();
        let pad = width - header.chars().count();
        out.push_str(&format!(
            "{header}:{} {}\n",
            " ".repeat(pad),
            column.cell(item)
        ));
    }
    out
}

/// A cell on one line: a multi-line value shows its first line and `…`.
fn one_line(cell: String) -> String {
    match cell.split_once('\n') {
        Some((first, _)) => format!("{first} …"),
        None => cell,
    }
}

/// Prints a list answer `{items, next_cursor}`: as JSON, or as a table
/// with a hint for the next page on stderr.
pub fn print_list(json: bool, answer: &Value, columns: &[Column]) {
    if json {
        print_json(answer);
        return;
    }
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if items.is_empty() {
        eprintln!("(none)");
    } else {
        print!("{}", table(columns, items));
    }
    if let Some(cursor) = answer["next_cursor"].as_str() {
        eprintln!("(more: repeat with --cursor {cursor})");
    }
}

/// Prints one resource: as JSON, or as aligned fields.
pub fn print_one(json: bool, answer: &Value, columns: &[Column]) {
    if json {
        print_json(answer);
    } else {
        print!("{}", fields(columns, answer));
    }
}

pub fn print_json(answer: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(answer).unwrap_or_else(|_| answer.to_string())
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell_in_characters() {
        let columns = [
            Column::Field("id", "/id"),
            Column::Field("roles", "/roles"),
            Column::Field("note", "/note"),
        ];
        let items = [
            json!({ "id": "ünï", "roles": [{ "space": "root", "role": "admin" }], "note": "a\nb" }),
            json!({ "id": "a-longer-id", "roles": [], "note": null }),
        ];
        assert_eq!(
            table(&columns, &items),
            "ID           ROLES       NOTE\n\
             ünï          admin@root  a …\n\
             a-longer-id  -           -\n"
        );
    }

    #[test]
    fn fields_align_their_values() {
        let columns = [
            Column::Field("id", "/id"),
            Column::Field("autodeploy", "/autodeploy"),
            Column::With("summary", |v| format!("{} to add", v["add"])),
        ];
        assert_eq!(
            fields(
                &columns,
                &json!({ "id": "net", "autodeploy": true, "add": 2 })
            ),
            "id:         net\nautodeploy: yes\nsummary:    2 to add\n"
        );
    }
}
