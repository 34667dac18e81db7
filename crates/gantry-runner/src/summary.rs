//! The change summary of a plan: `N to add, N to change, N to destroy`,
//! and the addresses of the resources that change. From OpenTofu's and
//! Terraform's JSON plan representation (`show -json`), or from a shell
//! workflow's `Plan: N to add, N to change, N to destroy.` line.

pub use gantry_domain::Summary;
use serde::Deserialize;

#[derive(Deserialize)]
struct Plan {
    #[serde(default)]
    resource_changes: Vec<ResourceChange>,
}

#[derive(Deserialize)]
struct ResourceChange {
    address: String,
    #[serde(default)]
    mode: Option<String>,
    change: Change,
}

#[derive(Deserialize)]
struct Change {
    actions: Vec<String>,
}

/// Reads `show -json` output. A replacement (`["delete", "create"]` or
/// `["create", "delete"]`) counts as one to add and one to destroy, as the
/// CLI's own summary does; data sources (`mode: data`) and `no-op`/`read`
/// actions are no change.
pub fn from_plan_json(json: &[u8]) -> Result<Summary, String> {
    let plan: Plan =
        serde_json::from_slice(json).map_err(|e| format!("the plan JSON cannot be read: {e}"))?;
    let mut summary = Summary::default();
    for resource in plan.resource_changes {
        if resource.mode.as_deref() == Some("data") {
            continue;
        }
        let actions: Vec<&str> = resource.change.actions.iter().map(String::as_str).collect();
        let counted = match actions.as_slice() {
            ["create"] => {
                summary.add += 1;
                true
            }
            ["update"] => {
                summary.change += 1;
                true
            }
            ["delete"] => {
                summary.destroy += 1;
                true
            }
            ["delete", "create"] | ["create", "delete"] => {
                summary.add += 1;
                summary.destroy += 1;
                true
            }
            _ => false,
        };
        if counted {
            summary.resources.push(resource.address);
        }
    }
    Ok(summary)
}

/// The last `Plan: N to add, N to change, N to destroy.` line of a log.
pub fn from_plan_line(log: &str) -> Option<Summary> {
    log.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix("Plan: ")?;
        let mut numbers = rest.split(',').map(|part| {
            part.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        });
        Some(Summary {
            add: numbers.next()??,
            change: numbers.next()??,
            destroy: numbers.next()??,
            resources: Vec::new(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_line() {
        let log = "Refreshing...\nPlan: 2 to add, 1 to change, 0 to destroy.\n";
        assert_eq!(
            from_plan_line(log),
            Some(Summary {
                add: 2,
                change: 1,
                destroy: 0,
                resources: Vec::new()
            })
        );
        assert_eq!(from_plan_line("No changes."), None);
        assert_eq!(from_plan_line("Plan: x to add"), None);
    }

    #[test]
    fn replacements_data_sources_and_no_ops() {
        let json = br#"{"format_version":"1.2","resource_changes":[
            {"address":"aws_vpc.main","mode":"managed","type":"aws_vpc","name":"main","change":{"actions":["create"]}},
            {"address":"aws_subnet.a","mode":"managed","change":{"actions":["delete","create"]}},
            {"address":"aws_subnet.b","mode":"managed","change":{"actions":["update"]}},
            {"address":"aws_subnet.c","mode":"managed","change":{"actions":["no-op"]}},
            {"address":"data.aws_ami.x","mode":"data","change":{"actions":["read"]}},
            {"address":"aws_eip.old","mode":"managed","change":{"actions":["delete"]}}]}"#;
        let summary = from_plan_json(json).expect("summary");
        assert_eq!((summary.add, summary.change, summary.destroy), (2, 1, 2));
        assert_eq!(
            summary.resources,
            [
                "aws_vpc.main",
                "aws_subnet.a",
                "aws_subnet.b",
                "aws_eip.old"
            ]
        );
        assert_eq!(summary.to_string(), "2 to add, 1 to change, 2 to destroy");
        assert!(from_plan_json(b"not json").is_err());
    }
}
