"""Drive the real presenced binary with the official, unmodified Python `msgraph-sdk`.

The point is wire compatibility: every request below is built and serialised by the SDK
(e.g. `expirationDuration` as Python's `str(timedelta)`, "1:00:00") and every response is
parsed by the SDK's own models, so a passing test means an unchanged Graph client works
against presenced. Each test uses fresh user ids, so tests are independent although they
share one server (see conftest.py).
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Awaitable, Optional
from zoneinfo import ZoneInfo

import pytest
from msgraph import GraphServiceClient
from msgraph.generated.communications.get_presences_by_user_id.get_presences_by_user_id_post_request_body import (
    GetPresencesByUserIdPostRequestBody,
)
from msgraph.generated.communications.presences.item.clear_presence.clear_presence_post_request_body import (
    ClearPresencePostRequestBody as CommsClearPresenceBody,
)
from msgraph.generated.communications.presences.item.set_presence.set_presence_post_request_body import (
    SetPresencePostRequestBody as CommsSetPresenceBody,
)
from msgraph.generated.communications.presences.item.set_status_message.set_status_message_post_request_body import (
    SetStatusMessagePostRequestBody as CommsSetStatusMessageBody,
)
from msgraph.generated.communications.presences.item.set_user_preferred_presence.set_user_preferred_presence_post_request_body import (
    SetUserPreferredPresencePostRequestBody as CommsSetPreferredBody,
)
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.presence import Presence
from msgraph.generated.models.presence_status_message import PresenceStatusMessage
from msgraph.generated.users.item.presence.clear_presence.clear_presence_post_request_body import (
    ClearPresencePostRequestBody,
)
from msgraph.generated.users.item.presence.set_presence.set_presence_post_request_body import (
    SetPresencePostRequestBody,
)
from msgraph.generated.users.item.presence.set_status_message.set_status_message_post_request_body import (
    SetStatusMessagePostRequestBody,
)
from msgraph.generated.users.item.presence.set_user_preferred_presence.set_user_preferred_presence_post_request_body import (
    SetUserPreferredPresencePostRequestBody,
)

ONE_HOUR = datetime.timedelta(hours=1)  # the SDK puts "1:00:00" on the wire
EIGHT_HOURS = datetime.timedelta(hours=8)  # "8:00:00"
SESSION = "22553876-f5ab-4529-bffb-cfe50aa89f87"  # docs: the app id is used as sessionId


def run(coro: Awaitable):
    # Plain asyncio.run keeps the suite free of pytest-asyncio; one call per test, because the
    # SDK's pooled httpx connections belong to the loop that opened them.
    return asyncio.run(coro)


async def set_presence(
    client: GraphServiceClient,
    user: str,
    availability: str,
    activity: str,
    session: str = SESSION,
    duration: Optional[datetime.timedelta] = ONE_HOUR,
) -> None:
    await client.users.by_user_id(user).presence.set_presence.post(
        SetPresencePostRequestBody(
            session_id=session,
            availability=availability,
            activity=activity,
            expiration_duration=duration,
        )
    )


async def get_presence(client: GraphServiceClient, user: str) -> Presence:
    presence = await client.users.by_user_id(user).presence.get()
    assert isinstance(presence, Presence)
    return presence


def state(presence: Presence) -> tuple[Optional[str], Optional[str]]:
    return presence.availability, presence.activity


async def expect_odata_error(call: Awaitable, status: int) -> ODataError:
    with pytest.raises(ODataError) as caught:
        await call
    err = caught.value
    assert err.response_status_code == status, err
    # The SDK only fills `error` when the body parses as Graph error JSON, so this also
    # checks the server's error envelope.
    assert err.error is not None and err.error.code, f"unparsed error body: {err!r}"
    return err


def future_local_time(days: int = 30) -> str:
    # Graph wants a zone-less dateTime next to a Windows zone name; a month ahead is in the
    # future in any zone.
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    return when.strftime("%Y-%m-%dT%H:%M:%S")


# Windows zone names the tests send, mapped to IANA for checking what comes back.
WINDOWS_ZONES = {"Pacific Standard Time": "America/Los_Angeles", "UTC": "UTC"}


def same_instant(echoed: DateTimeTimeZone, sent: str, sent_zone: str) -> bool:
    def to_utc(local: str, zone: str) -> datetime.datetime:
        naive = datetime.datetime.fromisoformat(local[:19])  # Graph may add 7 fractional digits
        return naive.replace(tzinfo=ZoneInfo(WINDOWS_ZONES[zone])).astimezone(datetime.timezone.utc)

    if echoed.date_time is None or echoed.time_zone not in WINDOWS_ZONES:
        return False
    return to_utc(echoed.date_time, echoed.time_zone) == to_utc(sent, sent_zone)


# --- setPresence / GET --------------------------------------------------------------------


def test_set_presence_then_get_user_presence(mint_token, graph, new_user):
    user = new_user()
    client = graph(mint_token())  # application token, Presence.ReadWrite.All

    async def scenario():
        await set_presence(client, user, "Busy", "InACall")
        return await get_presence(client, user)

    presence = run(scenario())
    assert presence.id == user
    assert state(presence) == ("Busy", "InACall")
    assert presence.status_message is None
    assert presence.out_of_office_settings is not None
    assert presence.out_of_office_settings.is_out_of_office is False
    assert presence.out_of_office_settings.message is None
    assert isinstance(presence.sequence_number, str) and presence.sequence_number


def test_unknown_user_reads_offline(mint_token, graph, new_user):
    presence = run(get_presence(graph(mint_token()), new_user()))
    assert state(presence) == ("Offline", "Offline")


def test_me_presence_with_delegated_token(mint_token, graph, new_user):
    user = new_user()
    me = graph(mint_token(user=user))

    async def scenario():
        # `me.presence.*` is the SDK's /me addressing of the same actions.
        await me.me.presence.set_presence.post(
            SetPresencePostRequestBody(
                session_id=SESSION, availability="Away", activity="Away", expiration_duration=ONE_HOUR
            )
        )
        return await me.me.presence.get(), await get_presence(me, user)

    via_me, via_users = run(scenario())
    assert via_me.id == user
    assert state(via_me) == ("Away", "Away")
    assert state(via_users) == ("Away", "Away")


def test_communications_presences_addressing(mint_token, graph, new_user):
    user = new_user()
    client = graph(mint_token())

    async def scenario():
        item = client.communications.presences.by_presence_id(user)
        await item.set_presence.post(
            CommsSetPresenceBody(
                session_id=SESSION,
                availability="DoNotDisturb",
                activity="Presenting",
                expiration_duration=ONE_HOUR,
            )
        )
        after_set = await item.get()
        await item.set_user_preferred_presence.post(
            CommsSetPreferredBody(availability="Busy", activity="Busy", expiration_duration=EIGHT_HOURS)
        )
        after_preferred = await item.get()
        await item.clear_user_preferred_presence.post()
        await item.set_status_message.post(
            CommsSetStatusMessageBody(
                status_message=PresenceStatusMessage(
                    message=ItemBody(content="via communications", content_type=BodyType.Text)
                )
            )
        )
        after_message = await item.get()
        await item.clear_presence.post(CommsClearPresenceBody(session_id=SESSION))
        after_clear = await item.get()
        return after_set, after_preferred, after_message, after_clear

    after_set, after_preferred, after_message, after_clear = run(scenario())
    assert after_set.id == user
    assert state(after_set) == ("DoNotDisturb", "Presenting")
    assert state(after_preferred) == ("Busy", "Busy")
    assert state(after_message) == ("DoNotDisturb", "Presenting")
    assert after_message.status_message.message.content == "via communications"
    assert state(after_clear) == ("Offline", "Offline")


# --- getPresencesByUserId ---------------------------------------------------------------------


def test_get_presences_by_user_id_keeps_request_order(mint_token, graph, new_user):
    busy, unknown, dnd = new_user(), new_user(), new_user()
    client = graph(mint_token())

    async def scenario():
        await set_presence(client, busy, "Busy", "InAConferenceCall")
        await set_presence(client, dnd, "DoNotDisturb", "Presenting")
        return await client.communications.get_presences_by_user_id.post(
            GetPresencesByUserIdPostRequestBody(ids=[dnd, unknown, busy])
        )

    result = run(scenario())
    assert [p.id for p in result.value] == [dnd, unknown, busy]
    assert [state(p) for p in result.value] == [
        ("DoNotDisturb", "Presenting"),
        ("Offline", "Offline"),
        ("Busy", "InAConferenceCall"),
    ]


# --- folding of sessions and preferred presence -----------------------------------------------


def test_sessions_fold_to_the_highest_availability(mint_token, graph, new_user):
    user = new_user()
    client = graph(mint_token())

    async def scenario():
        seen = []
        await set_presence(client, user, "Away", "Away", session="a")
        seen.append(state(await get_presence(client, user)))
        await set_presence(client, user, "Available", "Available", session="b")
        seen.append(state(await get_presence(client, user)))
        await set_presence(client, user, "Busy", "InACall", session="c")
        seen.append(state(await get_presence(client, user)))
        await set_presence(client, user, "DoNotDisturb", "Presenting", session="d")
        seen.append(state(await get_presence(client, user)))
        await client.users.by_user_id(user).presence.clear_presence.post(
            ClearPresencePostRequestBody(session_id="d")
        )
        seen.append(state(await get_presence(client, user)))
        return seen

    assert run(scenario()) == [
        ("Away", "Away"),
        ("Available", "Available"),  # Available > Away
        ("Busy", "InACall"),  # Busy > Available
        ("DoNotDisturb", "Presenting"),  # DoNotDisturb > Busy
        ("Busy", "InACall"),  # clearing the top session falls back to the next one
    ]


def test_preferred_presence_overrides_and_clear_restores(mint_token, graph, new_user):
    user = new_user()
    client = graph(mint_token())
    presence = client.users.by_user_id(user).presence

    async def scenario():
        await set_presence(client, user, "Available", "Available")
        await presence.set_user_preferred_presence.post(
            SetUserPreferredPresencePostRequestBody(
                availability="DoNotDisturb", activity="DoNotDisturb", expiration_duration=EIGHT_HOURS
            )
        )
        overridden = await get_presence(client, user)
        await presence.clear_user_preferred_presence.post()  # no request body at all
        restored = await get_presence(client, user)
        await presence.clear_user_preferred_presence.post()  # nothing left to clear: still 200
        return overridden, restored

    overridden, restored = run(scenario())
    assert state(overridden) == ("DoNotDisturb", "DoNotDisturb")
    assert state(restored) == ("Available", "Available")


def test_preferred_presence_needs_a_session(mint_token, graph, new_user):
    user = new_user()
    client = graph(mint_token())

    async def scenario():
        await client.users.by_user_id(user).presence.set_user_preferred_presence.post(
            SetUserPreferredPresencePostRequestBody(
                availability="BeRightBack", activity="BeRightBack", expiration_duration=EIGHT_HOURS
            )
        )
        without_session = await get_presence(client, user)
        await set_presence(client, user, "Busy", "InACall")
        with_session = await get_presence(client, user)
        return without_session, with_session

    without_session, with_session = run(scenario())
    assert state(without_session) == ("Offline", "Offline")
    assert state(with_session) == ("BeRightBack", "BeRightBack")


# --- status message ---------------------------------------------------------------------------


def test_status_message_dates_only_visible_to_self(mint_token, graph, new_user):
    user, other = new_user(), new_user()
    me = graph(mint_token(user=user))
    colleague = graph(mint_token(user=other))
    app = graph(mint_token())
    expiry = future_local_time()

    async def scenario():
        await me.me.presence.set_status_message.post(
            SetStatusMessagePostRequestBody(
                status_message=PresenceStatusMessage(
                    message=ItemBody(content="Heads down until Friday", content_type=BodyType.Text),
                    expiry_date_time=DateTimeTimeZone(date_time=expiry, time_zone="Pacific Standard Time"),
                )
            )
        )
        return (
            await me.me.presence.get(),
            await get_presence(colleague, user),
            await get_presence(app, user),
        )

    own, seen_by_colleague, seen_by_app = run(scenario())

    msg = own.status_message
    assert msg is not None
    assert msg.message.content == "Heads down until Friday"
    assert msg.message.content_type == BodyType.Text
    assert msg.expiry_date_time is not None
    # The server may echo the zone it was given or normalise to UTC; either way it must be
    # the instant we sent.
    assert same_instant(msg.expiry_date_time, expiry, "Pacific Standard Time"), msg.expiry_date_time
    assert isinstance(msg.published_date_time, datetime.datetime)
    assert msg.published_date_time.tzinfo is not None
    age = datetime.datetime.now(datetime.timezone.utc) - msg.published_date_time
    assert datetime.timedelta(minutes=-1) < age < datetime.timedelta(minutes=5), msg.published_date_time

    for other_view in (seen_by_colleague, seen_by_app):
        assert other_view.status_message is not None
        assert other_view.status_message.message.content == "Heads down until Friday"
        assert other_view.status_message.expiry_date_time is None
        assert other_view.status_message.published_date_time is None


# --- clearPresence ----------------------------------------------------------------------------


def test_clear_presence_goes_offline_then_404(mint_token, graph, new_user):
    user = new_user()
    client = graph(mint_token())
    clear = client.users.by_user_id(user).presence.clear_presence

    async def scenario():
        await set_presence(client, user, "Busy", "InACall")
        await clear.post(ClearPresencePostRequestBody(session_id=SESSION))
        after = await get_presence(client, user)
        err = await expect_odata_error(clear.post(ClearPresencePostRequestBody(session_id=SESSION)), 404)
        return after, err

    after, err = run(scenario())
    assert state(after) == ("Offline", "Offline")
    assert err.error.code == "NotFound"


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "availability, activity",
    [("Busy", "Away"), ("Available", "Busy"), ("DoNotDisturb", "DoNotDisturb"), ("Offline", "OffWork")],
)
def test_set_presence_rejects_unsupported_pair(mint_token, graph, new_user, availability, activity):
    user = new_user()
    client = graph(mint_token())

    async def scenario():
        err = await expect_odata_error(set_presence(client, user, availability, activity), 400)
        return err, await get_presence(client, user)

    err, after = run(scenario())
    assert err.error.code in {"InvalidArgument", "BadRequest"}
    assert state(after) == ("Offline", "Offline")  # nothing was stored


def test_set_user_preferred_presence_rejects_unsupported_pair(mint_token, graph, new_user):
    client = graph(mint_token())
    call = client.users.by_user_id(new_user()).presence.set_user_preferred_presence.post(
        SetUserPreferredPresencePostRequestBody(
            availability="Busy", activity="InACall", expiration_duration=EIGHT_HOURS
        )
    )
    err = run(expect_odata_error(call, 400))
    assert err.error.code in {"InvalidArgument", "BadRequest"}


@pytest.mark.parametrize(
    "duration, accepted",
    [
        (datetime.timedelta(minutes=5), True),  # "0:05:00", the documented minimum
        (datetime.timedelta(hours=4), True),  # "4:00:00", the documented maximum
        (datetime.timedelta(minutes=4), False),  # "0:04:00"
        (datetime.timedelta(days=1, minutes=5), False),  # "1 day, 0:05:00"
        (None, True),  # field omitted: server default applies
    ],
    ids=["0:05:00", "4:00:00", "0:04:00", "1 day, 0:05:00", "omitted"],
)
def test_set_presence_expiration_duration_as_python_serialises_it(
    mint_token, graph, new_user, duration, accepted
):
    user = new_user()
    client = graph(mint_token())

    async def scenario():
        call = set_presence(client, user, "Available", "Available", duration=duration)
        if accepted:
            await call
            return None, await get_presence(client, user)
        return await expect_odata_error(call, 400), await get_presence(client, user)

    err, after = run(scenario())
    if accepted:
        assert state(after) == ("Available", "Available")
    else:
        assert err.error.code in {"InvalidArgument", "BadRequest"}
        assert state(after) == ("Offline", "Offline")


# --- sequenceNumber ---------------------------------------------------------------------------


def test_sequence_number_grows_across_changes(mint_token, graph, new_user):
    user = new_user()
    client = graph(mint_token())
    presence = client.users.by_user_id(user).presence

    async def scenario():
        numbers = []

        async def snapshot():
            numbers.append((await get_presence(client, user)).sequence_number)

        await set_presence(client, user, "Available", "Available")
        await snapshot()
        await set_presence(client, user, "Busy", "InACall")
        await snapshot()
        await presence.set_user_preferred_presence.post(
            SetUserPreferredPresencePostRequestBody(
                availability="Away", activity="Away", expiration_duration=EIGHT_HOURS
            )
        )
        await snapshot()
        await presence.set_status_message.post(
            SetStatusMessagePostRequestBody(
                status_message=PresenceStatusMessage(message=ItemBody(content="hi", content_type=BodyType.Text))
            )
        )
        await snapshot()
        await presence.clear_presence.post(ClearPresencePostRequestBody(session_id=SESSION))
        await snapshot()
        return numbers

    numbers = run(scenario())
    assert all(isinstance(n, str) and n for n in numbers), numbers
    # Graph defines it as a lexicographically sortable string, so compare as strings.
    assert all(a < b for a, b in zip(numbers, numbers[1:])), numbers


# --- beta -------------------------------------------------------------------------------------


def test_v1_sdk_against_beta_base_url(mint_token, graph, new_user):
    # The v1 SDK's request builders produce the same relative paths as the beta SDK for
    # presence, so repointing base_url at /beta exercises the beta routes without another
    # package.
    user, unknown = new_user(), new_user()
    client = graph(mint_token(), version="beta")

    async def scenario():
        await set_presence(client, user, "Busy", "InACall")
        single = await get_presence(client, user)
        bulk = await client.communications.get_presences_by_user_id.post(
            GetPresencesByUserIdPostRequestBody(ids=[user, unknown])
        )
        await client.users.by_user_id(user).presence.clear_presence.post(
            ClearPresencePostRequestBody(session_id=SESSION)
        )
        return single, bulk, await client.communications.presences.by_presence_id(user).get()

    single, bulk, cleared = run(scenario())
    # Kiota keeps unknown keys in additional_data: proof the beta route answered.
    assert "/beta/" in single.additional_data.get("@odata.context", ""), single.additional_data
    assert state(single) == ("Busy", "InACall")
    assert [(p.id, *state(p)) for p in bulk.value] == [
        (user, "Busy", "InACall"),
        (unknown, "Offline", "Offline"),
    ]
    assert state(cleared) == ("Offline", "Offline")


# --- authorization ----------------------------------------------------------------------------


def test_me_with_application_token_is_400(mint_token, graph):
    client = graph(mint_token())  # no user: application permissions
    err = run(expect_odata_error(client.me.presence.get(), 400))
    assert err.error.message


def test_read_only_delegated_token_cannot_set_presence(mint_token, graph, new_user):
    user = new_user()
    client = graph(mint_token(user=user, scopes=["Presence.Read"]))

    async def scenario():
        own = await client.me.presence.get()  # reading is what Presence.Read is for
        err = await expect_odata_error(set_presence(client, user, "Available", "Available"), 403)
        return own, err

    own, err = run(scenario())
    assert state(own) == ("Offline", "Offline")
    assert err.error.code
