//! Ordering blocks so that every block comes after everything it depends on.
//!
//! Used when a set of blocks arrives together (a batch from a peer, an import) and must be
//! appended in an order the store accepts.

use std::collections::{BTreeMap, BTreeSet};

/// A dependency cycle was found; `member` lies on or behind it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle through {member:?}")]
pub struct CycleError<Id: std::fmt::Debug> {
    /// A node that cannot be ordered.
    pub member: Id,
}

/// Orders `nodes` (id, parents) so that each node follows every parent that is also among
/// `nodes`; parents outside the set are assumed present already. Ties keep input order, so
/// the result is deterministic. Fails if the dependencies contain a cycle.
pub fn topo_order<Id: Ord + Clone + std::fmt::Debug>(
    nodes: &[(Id, Vec<Id>)],
) -> Result<Vec<usize>, CycleError<Id>> {
    let index: BTreeMap<&Id, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id, i))
        .collect();
    let mut waiting_on = vec![0usize; nodes.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, (_, parents)) in nodes.iter().enumerate() {
        let inside: BTreeSet<usize> = parents
            .iter()
            .filter_map(|p| index.get(p).copied())
            .collect();
        waiting_on[i] = inside.len();
        for p in inside {
            children[p].push(i);
        }
    }
    // Ready nodes by input position, so ties resolve in input order.
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &children[i] {
            waiting_on[c] -= 1;
            if waiting_on[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() < nodes.len() {
        let stuck = (0..nodes.len()).find(|&i| waiting_on[i] > 0).unwrap_or(0);
        return Err(CycleError {
            member: nodes[stuck].0.clone(),
        });
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_parents_first_and_detects_cycles() {
        let nodes = vec![(3, vec![1, 2]), (1, vec![]), (2, vec![1, 99])];
        assert_eq!(topo_order(&nodes).unwrap(), [1, 2, 0]);
        let cyclic = vec![(1, vec![3]), (2, vec![1]), (3, vec![2]), (4, vec![])];
        assert!(topo_order(&cyclic).is_err());
        let self_loop = vec![(1, vec![1])];
        assert_eq!(topo_order(&self_loop), Err(CycleError { member: 1 }));
    }
}
