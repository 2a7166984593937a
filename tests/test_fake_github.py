"""The fake GitHub is held to GitHub's published REST description (npm @octokit/openapi): the
checker refuses what GitHub would refuse, and the fake's own answers fit the description."""

from __future__ import annotations

import httpx
import pytest

from tests.fake_github import fake_github
from tests.github_openapi import check_request, check_response, description

REPO, SHA = "acme/app", "c0ffee" + "0" * 34
STATUS = f"/repos/{REPO}/statuses/{SHA}"


def test_the_description_is_parsed_once() -> None:
    assert description() is description()
    assert description()["openapi"].startswith("3.")


def test_a_valid_status_passes() -> None:
    body = {"state": "success", "context": "runner/ci", "description": "done"}
    assert check_request("POST", STATUS, {}, body) == []
    assert check_request("POST", STATUS, {}, {"state": "pending", "target_url": None}) == []


def test_a_status_state_github_does_not_know_is_refused() -> None:
    (problem,) = check_request("POST", STATUS, {}, {"state": "passed", "context": "runner/ci"})
    assert "body/state" in problem
    assert '"passed"' in problem


def test_wrong_types_in_a_body_are_refused() -> None:
    problems = check_request("POST", STATUS, {}, {"state": "success", "context": 7})
    assert len(problems) == 1
    assert "body/context" in problems[0]


def test_an_unknown_path_or_method_is_refused() -> None:
    (problem,) = check_request("GET", f"/repos/{REPO}/no-such-thing", {}, None)
    assert "no such path" in problem
    (problem,) = check_request("DELETE", STATUS, {}, None)
    assert "method not documented" in problem
    assert "POST /repos/{owner}/{repo}/statuses/{sha}" in problem


def test_a_comment_without_body_is_refused() -> None:
    path = f"/repos/{REPO}/issues/9/comments"
    (problem,) = check_request("POST", path, {}, {"text": "hello"})
    assert '"body" is a required property' in problem
    (problem,) = check_request("POST", path, {}, None)
    assert "a JSON body is required" in problem
    assert check_request("POST", path, {}, {"body": "hello"}) == []


def test_a_body_where_none_is_taken_is_refused() -> None:
    (problem,) = check_request("GET", f"/repos/{REPO}/pulls/9", {}, {"x": 1})
    assert "takes no body" in problem


def test_path_and_query_parameters_are_checked() -> None:
    listing = f"/repos/{REPO}/issues/9/comments"
    assert check_request("GET", listing, {"per_page": "100", "page": "2"}, None) == []
    (problem,) = check_request("GET", listing, {"per_page": "many"}, None)
    assert "query per_page" in problem
    assert "not an integer" in problem
    (problem,) = check_request("GET", listing, {"pages": "2"}, None)
    assert "unknown query parameter 'pages'" in problem
    (problem,) = check_request("POST", f"/repos/{REPO}/issues/nine/comments", {}, {"body": "x"})
    assert "path parameter issue_number" in problem


def test_the_most_specific_template_wins() -> None:
    # /repos/{owner}/{repo}/issues/comments (all comments of a repository), not issue #comments
    assert check_request("GET", f"/repos/{REPO}/issues/comments", {"sort": "created"}) == []


def test_answers_are_checked_against_the_documented_schema() -> None:
    (problem,) = check_response("POST", STATUS, 200, {"id": 1})
    assert "status not documented" in problem
    (problem,) = check_response("POST", STATUS, 404, {"message": 404})
    assert "body/message" in problem  # an undocumented error has GitHub's basic-error shape
    problems = check_response("POST", STATUS, 201, {"id": 1})
    assert any('"node_id" is a required property' in p for p in problems)
    # a status GitHub documents without content takes any body
    membership = "/orgs/acme/teams/security/memberships/carol"
    assert check_response("GET", membership, 404, {"message": "Not Found"}) == []


def test_the_fakes_answers_fit_the_description() -> None:
    with fake_github() as fake:
        fake.writers = {"alice"}
        fake.teams = {"acme/security": {"carol"}}
        fake.pulls[(REPO, 9)] = {"head": {"sha": SHA}, "user": {"login": "dev"}}
        calls = [
            ("GET", f"/repos/{REPO}/collaborators/alice/permission", None, None, 200),
            ("GET", f"/repos/{REPO}/collaborators/bob/permission", None, None, 200),
            ("GET", "/orgs/acme/teams/security/memberships/carol", None, None, 200),
            ("GET", "/orgs/acme/teams/security/memberships/bob", None, None, 404),
            ("GET", f"/repos/{REPO}/pulls/9", None, None, 200),
            ("GET", f"/repos/{REPO}/pulls/10", None, None, 404),
            ("POST", STATUS, None, {"state": "pending", "context": "runner/ci"}, 201),
            ("POST", f"/repos/{REPO}/issues/9/comments", None, {"body": "first"}, 201),
            ("POST", f"/repos/{REPO}/issues/9/comments", None, {"body": "second"}, 201),
            ("GET", f"/repos/{REPO}/issues/9/comments", {"per_page": 1, "page": 2}, None, 200),
            ("PATCH", f"/repos/{REPO}/issues/comments/1", None, {"body": "edited"}, 200),
            ("PATCH", f"/repos/{REPO}/issues/comments/99", None, {"body": "edited"}, 404),
        ]
        answers = {}
        with httpx.Client(base_url=fake.url) as http:
            for method, path, params, body, expected in calls:
                answer = http.request(method, path, params=params, json=body)
                assert answer.status_code == expected, (method, path, answer.text)
                assert check_response(method, path, expected, answer.json()) == []
                answers[(method, path)] = answer.json()
        assert fake.violations == []
    permission = answers[("GET", f"/repos/{REPO}/collaborators/alice/permission")]
    assert (permission["permission"], permission["user"]["login"]) == ("write", "alice")
    pull = answers[("GET", f"/repos/{REPO}/pulls/9")]
    assert (pull["number"], pull["head"]["sha"], pull["user"]["login"]) == (9, SHA, "dev")
    assert "ref" in pull["head"]  # the rest of GitHub's example is kept
    (page2,) = answers[("GET", f"/repos/{REPO}/issues/9/comments")]
    assert (page2["id"], page2["body"]) == (2, "second")
    assert fake.comments[0] == (REPO, 9, "edited")
    assert fake.statuses == [(REPO, SHA, {"state": "pending", "context": "runner/ci"})]


def test_a_request_github_refuses_gets_422_and_fails_the_test() -> None:
    running = fake_github()
    fake = running.__enter__()
    with httpx.Client(base_url=fake.url) as http:
        answer = http.post(STATUS, json={"state": "passed"})
        assert answer.status_code == 422
        assert answer.json()["message"] == "Validation Failed"
        assert "passed" in answer.json()["errors"][0]["message"]
        # shaped as GitHub's own validation errors
        assert check_response("POST", f"/repos/{REPO}/issues/9/comments", 422, answer.json()) == []
        answer = http.get(f"/repos/{REPO}/pulls/9", params={"with": "reviews"})
        assert answer.status_code == 422
    assert fake.statuses == []  # refused requests reach no handler
    assert len(fake.violations) == 2
    with pytest.raises(AssertionError, match="unknown query parameter 'with'"):
        running.__exit__(None, None, None)


def test_a_github_clients_request_to_an_unserved_path_is_a_violation() -> None:
    github = {"X-GitHub-Api-Version": "2022-11-28"}
    running = fake_github()
    fake = running.__enter__()
    with httpx.Client(base_url=fake.url) as http:
        # Gitea's own API (no GitHub API version named): GitHub's 404, no violation
        assert http.get("/orgs/acme/teams/search", params={"q": "x"}).status_code == 404
        assert fake.violations == []
        # a real GitHub path the fake lacks, then no such path at GitHub at all
        assert http.get(f"/repos/{REPO}", headers=github).status_code == 404
        assert http.get(f"/repos/{REPO}/nothing-here", headers=github).status_code == 404
    assert "the fake does not" in fake.violations[0]
    assert "no such path" in fake.violations[1]
    with pytest.raises(AssertionError, match="the fake does not"):
        running.__exit__(None, None, None)
