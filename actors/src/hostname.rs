//! Node-name expansion (`-n`), as Celery does it: `celery@%h` by default; a name without `@`
//! is the host part; `%h` full host, `%n` short host, `%d` domain, `%i`/`%I` pool index (the
//! main process is index 0 / empty), `%%` a percent sign. Any other `%x` is an error.

/// Expands a node name template against the machine's host name.
///
/// ```
/// use celeryd_actors::hostname::expand_nodename;
/// assert_eq!(expand_nodename("celery@%h", "box.example.com").unwrap(), "celery@box.example.com");
/// assert_eq!(expand_nodename("w1.%n", "box.example.com").unwrap(), "celery@w1.box");
/// assert_eq!(expand_nodename("w@%d", "box.example.com").unwrap(), "w@example.com");
/// ```
pub fn expand_nodename(template: &str, host: &str) -> Result<String, String> {
    let full = if template.contains('@') {
        template.to_owned()
    } else {
        format!("celery@{template}")
    };
    let (short, domain) = match host.split_once('.') {
        Some((s, d)) => (s, d),
        None => (host, ""),
    };
    let out = expand_keys(&full, template, |key| match key {
        'h' => Some(host),
        'n' => Some(short),
        'd' => Some(domain),
        _ => None,
    })?;
    if out.ends_with('@') || out.starts_with('@') {
        return Err(format!(
            "{template:?} expands to {out:?}, which lacks a name or host part"
        ));
    }
    Ok(out)
}

/// A file path (statedb, logfile, pidfile, schedule) with Celery's node format keys expanded
/// for node `nodename` (`name@host`): `%h` the host, `%n` the name, `%d` the host's domain,
/// `%p` the whole node name, `%i` the process index and `%I` its `-<index>` form (the main
/// process writes these files: `0` and nothing), `%%` a percent sign.
///
/// ```
/// use celeryd_actors::hostname::expand_path;
/// let p = expand_path("/var/run/celery/%n%I.state", "w1@box.example.com").unwrap();
/// assert_eq!(p, "/var/run/celery/w1.state");
/// assert_eq!(expand_path("%h-%d-%p-%i-%%", "w1@box.lan").unwrap(), "box.lan-lan-w1@box.lan-0-%");
/// ```
pub fn expand_path(template: &str, nodename: &str) -> Result<String, String> {
    let (name, host) = nodename.split_once('@').unwrap_or(("celery", nodename));
    let domain = host.split_once('.').map_or("", |(_, d)| d);
    expand_keys(template, template, |key| match key {
        'h' => Some(host),
        'n' => Some(name),
        'd' => Some(domain),
        'p' => Some(nodename),
        _ => None,
    })
}

/// Expands `%<key>` in `text` with `value(key)`, and the keys every template has: `%i` (0),
/// `%I` (nothing: the main process) and `%%`. `template` names the text in errors.
fn expand_keys<'a>(
    text: &str,
    template: &str,
    value: impl Fn(char) -> Option<&'a str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('i') => out.push('0'),
            Some('I') => {}
            Some('%') => out.push('%'),
            Some(key) => match value(key) {
                Some(v) => out.push_str(v),
                None => return Err(format!("unknown format key %{key} in {template:?}")),
            },
            None => return Err(format!("dangling % at the end of {template:?}")),
        }
    }
    Ok(out)
}

/// This machine's host name (as `gethostname(2)` reports it).
pub fn this_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_every_key() {
        let h = "node1.dc.example";
        assert_eq!(
            expand_nodename("celery@%h", h).unwrap(),
            "celery@node1.dc.example"
        );
        assert_eq!(expand_nodename("%n@%d", h).unwrap(), "node1@dc.example");
        assert_eq!(
            expand_nodename("w%i%I@%h", h).unwrap(),
            "w0@node1.dc.example"
        );
        assert_eq!(expand_nodename("a%%b@x", h).unwrap(), "a%b@x");
        assert_eq!(expand_nodename("w1", h).unwrap(), "celery@w1");
        assert_eq!(expand_nodename("w1@%n", "plain").unwrap(), "w1@plain");
        assert!(
            expand_nodename("w@%d", "plain")
                .unwrap_err()
                .contains("lacks")
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(expand_nodename("celery@%x", "h").is_err());
        assert!(expand_nodename("celery@h%", "h").is_err());
    }
}
