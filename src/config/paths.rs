//! `os.path.abspath(os.path.expanduser(p))` without touching the file system: CVS resolves
//! `container.setup_script` that way, so the core must produce the same absolute path.

use super::Env;

/// `posixpath.expanduser`: `~` and `~/x` use the control user's home, `~name/x` that user's home;
/// an unknown user leaves the path unchanged.
pub fn expanduser(path: &str, env: &dyn Env) -> String {
    if !path.starts_with('~') {
        return path.to_owned();
    }
    let end = path[1..].find('/').map_or(path.len(), |i| i + 1);
    let home = if end == 1 {
        env.home_of(None)
    } else {
        env.home_of(Some(&path[1..end]))
    };
    let Some(home) = home else {
        return path.to_owned();
    };
    let joined = format!("{}{}", home.trim_end_matches('/'), &path[end..]);
    if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    }
}

/// `posixpath.normpath`: lexical, so `a/../b` becomes `b` even if `a` is a symlink (as in Python).
pub fn normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let initial_slashes = if path.starts_with("//") && !path.starts_with("///") {
        2
    } else if path.starts_with('/') {
        1
    } else {
        0
    };
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        if comp.is_empty() || comp == "." {
            continue;
        }
        let keep = comp != ".."
            || (initial_slashes == 0 && parts.is_empty())
            || parts.last() == Some(&"..");
        if keep {
            parts.push(comp);
        } else {
            parts.pop();
        }
    }
    let joined = format!("{}{}", "/".repeat(initial_slashes), parts.join("/"));
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// `posixpath.abspath` against the control host's working directory.
pub fn abspath(path: &str, env: &dyn Env) -> String {
    if path.starts_with('/') {
        normpath(path)
    } else {
        normpath(&format!("{}/{}", env.cwd(), path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::FakeEnv;

    #[test]
    fn expanduser_table() {
        let env = FakeEnv::default();
        let cases = [
            ("plain/x", "plain/x"),
            ("~", "/home/alice"),
            ("~/s.sh", "/home/alice/s.sh"),
            ("~bob/s.sh", "/srv/bob/s.sh"),
            ("~nobody/s.sh", "~nobody/s.sh"),
        ];
        for (input, want) in cases {
            assert_eq!(expanduser(input, &env), want, "expanduser({input:?})");
        }
    }

    #[test]
    fn normpath_matches_python() {
        let cases = [
            ("", "."),
            ("/", "/"),
            ("//a", "//a"),
            ("///a", "/a"),
            ("a/./b/../c", "a/c"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("a/..", "."),
            ("../../x/..", "../.."),
            ("/a//b/", "/a/b"),
        ];
        for (input, want) in cases {
            assert_eq!(normpath(input), want, "normpath({input:?})");
        }
    }

    #[test]
    fn abspath_joins_cwd() {
        let env = FakeEnv::default();
        assert_eq!(abspath("s.sh", &env), "/work/dir/s.sh");
        assert_eq!(abspath("../s.sh", &env), "/work/s.sh");
        assert_eq!(abspath("/x/./y", &env), "/x/y");
    }
}
