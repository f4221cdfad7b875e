use super::*;

fn commands(body: &str) -> Vec<Command> {
    parse(body).into_iter().map(|c| c.command).collect()
}

fn one(body: &str) -> Command {
    let all = commands(body);
    assert_eq!(all.len(), 1, "{body:?} -> {all:?}");
    all.into_iter().next().expect("one command")
}

fn run(pipeline: Option<&str>, params: &[(&str, &str)]) -> Command {
    Command::Run {
        pipeline: pipeline.map(str::to_owned),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn invalid_message(command: Command) -> String {
    match command {
        Command::Invalid { message, .. } => message,
        other => panic!("expected an invalid command, got {other:?}"),
    }
}

#[test]
fn run_with_a_pipeline_and_parameters() {
    assert_eq!(
        one("/ferry run train lr=0.01"),
        run(Some("train"), &[("lr", "0.01")])
    );
    assert_eq!(one("/ferry run"), run(None, &[]));
    assert_eq!(one("/ferry run lr=0.1"), run(None, &[("lr", "0.1")]));
    assert_eq!(
        one("/ferry run train lr=0.01 epochs=3"),
        run(Some("train"), &[("lr", "0.01"), ("epochs", "3")])
    );
    // Only the first `=` splits; an empty value is a value.
    assert_eq!(
        one("/ferry run train expr=a=b empty="),
        run(Some("train"), &[("expr", "a=b"), ("empty", "")])
    );
}

#[test]
fn quoted_values_keep_their_spaces() {
    assert_eq!(
        one(r#"/ferry run train note="a b" tag='x  y'"#),
        run(Some("train"), &[("note", "a b"), ("tag", "x  y")])
    );
    assert_eq!(
        one(r#"/ferry run train "note=a b""#),
        run(Some("train"), &[("note", "a b")])
    );
    assert_eq!(
        one(r#"/ferry run train msg="say \"hi\" \\ ok""#),
        run(Some("train"), &[("msg", r#"say "hi" \ ok"#)])
    );
    // Inside single quotes a backslash is just a backslash.
    assert_eq!(
        one(r"/ferry run train path='C:\dir'"),
        run(Some("train"), &[("path", r"C:\dir")])
    );
    assert_eq!(
        one(r#"/ferry run train e="""#),
        run(Some("train"), &[("e", "")])
    );
}

#[test]
fn unclosed_quotes_are_refused() {
    assert!(invalid_message(one(r#"/ferry run train note="a b"#)).contains("not closed"));
    assert!(invalid_message(one("/ferry run train note='a")).contains("not closed"));
    assert!(invalid_message(one(r#"/ferry run train note="a\"#)).contains("not closed"));
}

#[test]
fn run_arguments_in_the_wrong_shape_are_refused() {
    assert!(invalid_message(one("/ferry run train eval")).contains("the pipeline comes first"));
    assert!(invalid_message(one("/ferry run lr=1 train")).contains("the pipeline comes first"));
    assert!(invalid_message(one("/ferry run =1")).contains("no parameter name"));
    assert!(invalid_message(one("/ferry run t lr=1 lr=2")).contains("given twice"));
    assert!(invalid_message(one("/ferry run --all")).contains("`--all`"));
}

#[test]
fn rerun_cancel_ok_to_test_and_help() {
    let rerun = |p: Option<&str>, all| Command::Rerun {
        pipeline: p.map(str::to_owned),
        all,
    };
    assert_eq!(one("/ferry rerun"), rerun(None, false));
    assert_eq!(one("/ferry rerun --all"), rerun(None, true));
    assert_eq!(one("/ferry rerun train"), rerun(Some("train"), false));
    assert_eq!(one("/ferry rerun --all train"), rerun(Some("train"), true));
    assert!(invalid_message(one("/ferry rerun train lr=1")).contains("/ferry run"));
    assert!(invalid_message(one("/ferry rerun a b")).contains("`b`"));
    assert!(invalid_message(one("/ferry rerun --failed")).contains("`--failed`"));

    assert_eq!(one("/ferry cancel"), Command::Cancel { pipeline: None });
    assert_eq!(
        one("/ferry cancel train"),
        Command::Cancel {
            pipeline: Some("train".into())
        }
    );
    assert!(invalid_message(one("/ferry cancel a b")).contains("`b`"));
    assert!(invalid_message(one("/ferry cancel --all")).contains("`--all`"));

    assert_eq!(one("/ferry ok-to-test"), Command::OkToTest);
    assert!(invalid_message(one("/ferry ok-to-test abc123")).contains("`abc123`"));
    assert_eq!(one("/ferry help"), Command::Help);
    assert_eq!(one("/ferry help run"), Command::Help);
    assert_eq!(one("/ferry"), Command::Help);
    assert_eq!(one("/ferry   "), Command::Help);
}

#[test]
fn unknown_verbs_are_kept_for_the_answer() {
    assert_eq!(
        one("/ferry deploy prod"),
        Command::Unknown {
            verb: "deploy".into()
        }
    );
    assert_eq!(
        one("/ferry ok_to_test"),
        Command::Unknown {
            verb: "ok_to_test".into()
        }
    );
}

#[test]
fn prefix_and_verbs_match_in_any_case_but_names_do_not() {
    assert_eq!(
        one("/Ferry RUN Train LR=1"),
        run(Some("Train"), &[("LR", "1")])
    );
    assert_eq!(one("/FERRY Ok-To-Test"), Command::OkToTest);
}

#[test]
fn only_lines_that_start_with_the_prefix_are_commands() {
    assert!(commands("please /ferry run train").is_empty());
    assert!(commands("/ferryrun train").is_empty());
    assert!(commands("/ferry-run").is_empty());
    assert!(commands("ferry run").is_empty());
    assert!(commands("`/ferry run`").is_empty());
    assert!(commands("> /ferry run train").is_empty());
    assert!(commands("- /ferry run train").is_empty());
    assert!(commands("").is_empty());
    // Up to three spaces of indentation are still a line; four are code.
    assert_eq!(one("   /ferry help"), Command::Help);
    assert!(commands("    /ferry help").is_empty());
    assert!(commands("\t/ferry help").is_empty());
    // A tab after the prefix is whitespace.
    assert_eq!(one("/ferry\trun"), run(None, &[]));
}

#[test]
fn text_before_and_after_is_ignored() {
    let body = "Looks good to me.\n\n/ferry run train lr=0.01\n\nThanks!\n";
    let parsed = parse(body);
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].text, "/ferry run train lr=0.01");
    assert_eq!(parsed[0].command, run(Some("train"), &[("lr", "0.01")]));
    // Windows line ends.
    assert_eq!(one("hi\r\n/ferry help\r\nbye"), Command::Help);
}

#[test]
fn code_blocks_are_ignored() {
    let body = "To run it yourself:\n```\n/ferry run train\n```\n~~~~text\n/ferry cancel\n```\n/ferry rerun\n~~~~\n/ferry help\n";
    assert_eq!(commands(body), [Command::Help]);
    // A longer closing fence closes; a shorter one does not.
    let body = "````\n```\n/ferry run\n````\n/ferry ok-to-test\n";
    assert_eq!(commands(body), [Command::OkToTest]);
    // An unclosed block runs to the end of the comment.
    assert!(commands("```\n/ferry run\n").is_empty());
    // A fence with an info string still opens; text after a closing fence does not close.
    let body = "```sh\n/ferry run\n``` not a close\n/ferry cancel\n```\n/ferry help";
    assert_eq!(commands(body), [Command::Help]);
}

#[test]
fn several_commands_run_in_order() {
    let body = "/ferry cancel train\nsome words\n/ferry run train lr=1\n/ferry run train lr=2\n";
    assert_eq!(
        commands(body),
        [
            Command::Cancel {
                pipeline: Some("train".into())
            },
            run(Some("train"), &[("lr", "1")]),
            run(Some("train"), &[("lr", "2")]),
        ]
    );
}

#[test]
fn too_many_commands_are_cut_with_a_note() {
    let body = "/ferry help\n".repeat(MAX_COMMANDS + 3);
    let parsed = commands(&body);
    assert_eq!(parsed.len(), MAX_COMMANDS + 1);
    assert!(parsed[..MAX_COMMANDS].iter().all(|c| *c == Command::Help));
    assert!(invalid_message(parsed[MAX_COMMANDS].clone()).contains("at most"));
}

#[test]
fn ferrys_own_comments_are_never_commands() {
    let reply = "<!-- ferry:reply:12 -->\n@dev\n/ferry help\n/ferry run train\n";
    assert!(commands(reply).is_empty());
}

#[test]
fn very_long_lines_are_refused() {
    let body = format!("/ferry run train x={}", "a".repeat(MAX_LINE));
    assert!(invalid_message(one(&body)).contains("longer than"));
}

#[test]
fn non_ascii_text_is_handled() {
    assert_eq!(
        one("/ferry run train note=\"héllo wörld\""),
        run(Some("train"), &[("note", "héllo wörld")])
    );
    // A multi-byte character right where the prefix would end.
    assert!(commands("/ferr€ run").is_empty());
    assert!(commands("é/ferry run").is_empty());
    assert!(commands("/ferry\u{00a0}run").len() == 1);
}
