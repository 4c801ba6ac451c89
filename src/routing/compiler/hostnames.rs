//! Hostname intersection between a listener and a route (Gateway API, HTTPRoute `hostnames`).

use crate::routing::table::host_matches;

/// The hostnames a route serves on a listener, lower case. An empty vector means the two do not
/// intersect (the route cannot attach); `None` inside the vector stands for "any host".
///
/// - no listener hostname: the route's hostnames, or any host when it has none;
/// - no route hostnames: the listener's;
/// - otherwise each pair that overlaps contributes its more specific side.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Vec<Option<String>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    let Some(listener) = listener.map(str::to_ascii_lowercase) else {
        if route.is_empty() {
            return vec![None];
        }
        return route.into_iter().map(Some).collect();
    };
    if route.is_empty() {
        return vec![Some(listener)];
    }
    let mut out = Vec::new();
    for r in route {
        let hit = if r == listener {
            Some(r)
        } else if host_matches(&r, &listener) {
            // The route's wildcard covers the listener's hostname (exact or narrower wildcard).
            Some(listener.clone())
        } else if host_matches(&listener, &r) {
            // The listener's wildcard covers the route's hostname.
            Some(r)
        } else {
            None
        };
        if let Some(h) = hit {
            if !out.contains(&Some(h.clone())) {
                out.push(Some(h));
            }
        }
    }
    out
}

/// Whether two hostnames (`None`: any) have a hostname in common: equal, or one a wildcard
/// that covers the other (`*.example.com` covers `a.example.com` and `*.a.example.com`).
pub(super) fn overlap(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => host_matches(a, b) || host_matches(b, a),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn wildcard_route_narrows_to_exact_listener() {
        assert_eq!(
            intersect(Some("foo.example.com"), &s(&["*.example.com"])),
            vec![Some("foo.example.com".into())]
        );
    }

    #[test]
    fn exact_route_inside_wildcard_listener() {
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["a.example.com", "other.org"])),
            vec![Some("a.example.com".into())]
        );
    }

    #[test]
    fn nested_wildcards_keep_the_narrower() {
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["*.a.example.com"])),
            vec![Some("*.a.example.com".into())]
        );
        assert_eq!(
            intersect(Some("*.a.example.com"), &s(&["*.example.com"])),
            vec![Some("*.a.example.com".into())]
        );
    }

    #[test]
    fn wildcard_does_not_match_its_bare_suffix() {
        assert!(intersect(Some("example.com"), &s(&["*.example.com"])).is_empty());
    }
}
