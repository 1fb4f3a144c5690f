// The reviewer page: sign in with a key, take items from the queue, review them.
//
// Model output is untrusted: every text from an item is set with textContent,
// never as markup. The key stays in sessionStorage (this tab only) and goes to
// the gateway as a bearer header.
(function () {
  "use strict";

  const STORAGE_KEY = "ownchat.review.key";
  // The API lives beside the page: /review/ -> /review/api/...
  const API_ROOT = new URL("api/", window.location.href.split(/[?#]/)[0]);

  const state = {
    key: null,
    reviewer: null,
    item: null,
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  class NetworkError extends Error {}

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const options = {
      method,
      headers: { Authorization: "Bearer " + state.key },
      cache: "no-store",
    };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, API_ROOT), options);
    } catch (error) {
      throw new NetworkError(String(error));
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (error) {
      payload = null;
    }
    if (!response.ok) {
      const detail = (payload && payload.error) || {};
      throw new ApiError(
        response.status,
        detail.code || "",
        detail.message || response.statusText || "request failed",
      );
    }
    return payload;
  }

  // Messages: the status line is polite, the error line is an alert.
  function say(text) {
    $("status").textContent = text;
  }

  function fail(text) {
    $("error").textContent = text;
  }

  function clearMessages() {
    say("");
    fail("");
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  // ---- signing in and out ----

  async function signIn(key, remembered) {
    state.key = key;
    $("sign-in-button").disabled = true;
    try {
      const me = await api("GET", "me");
      state.reviewer = me;
      sessionStorage.setItem(STORAGE_KEY, key);
      $("reviewer-name").textContent = me.name;
      $("key").value = "";
      show("sign-in", false);
      show("account", true);
      show("workspace", true);
      clearMessages();
      await refreshProgress();
      await takeNext("Signed in as " + me.name + ".");
    } catch (error) {
      state.key = null;
      if (remembered) {
        sessionStorage.removeItem(STORAGE_KEY);
      }
      if (error instanceof NetworkError) {
        fail("Network error: the gateway could not be reached. Try again.");
      } else if (error.status === 401) {
        fail("That key was refused: it is unknown or has been revoked.");
      } else if (error.status === 403) {
        fail("That key may not review: it needs the review scope.");
      } else {
        fail("Could not sign in: " + error.message);
      }
      $("key").focus();
    } finally {
      $("sign-in-button").disabled = false;
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(STORAGE_KEY);
    state.key = null;
    state.reviewer = null;
    state.item = null;
    show("workspace", false);
    show("account", false);
    show("item", false);
    show("empty", false);
    show("sign-in", true);
    clearMessages();
    if (message) {
      fail(message);
    } else {
      say("Signed out.");
    }
    $("key").focus();
  }

  // ---- the queue ----

  async function refreshProgress() {
    try {
      const progress = await api("GET", "progress");
      $("done-count").textContent = String(progress.done);
      $("left-count").textContent = String(progress.left);
    } catch (error) {
      handle(error);
    }
  }

  // `done` says what just happened ("Review saved."), ahead of what comes next.
  async function takeNext(done) {
    if (state.busy) {
      return;
    }
    state.busy = true;
    const before = done ? done + " " : "";
    try {
      const kind = $("kind").value || null;
      const answer = await api("POST", "next", { kind });
      if (answer.item) {
        showItem(answer.item);
        say(before + "New " + answer.item.kind + " item.");
      } else {
        state.item = null;
        show("item", false);
        show("empty", true);
        say(before + "The queue is empty.");
        $("check-again").focus();
      }
    } catch (error) {
      handle(error);
    } finally {
      state.busy = false;
    }
  }

  function showItem(item) {
    state.item = item;
    fail("");
    show("empty", false);
    const form = $("item");
    form.reset();
    form.dataset.kind = item.kind;
    form.dataset.itemId = item.id;
    const titles = {
      rating: "Rate the reply",
      pairwise: "Which reply is better?",
      correction: "Correct the reply",
    };
    $("item-title").textContent = titles[item.kind] || "Review the item";
    $("lease").textContent = item.lease_expire_time
      ? "Held for you until " + new Date(item.lease_expire_time).toLocaleTimeString() + "."
      : "";

    const conversation = $("conversation");
    conversation.replaceChildren();
    for (const turn of item.context) {
      const entry = document.createElement("li");
      entry.className = "turn turn-" + turn.role;
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = turn.role;
      const content = document.createElement("div");
      content.className = "content";
      content.textContent = turn.content;
      entry.append(role, content);
      conversation.append(entry);
    }

    show("rating-panel", item.kind === "rating");
    show("pairwise-panel", item.kind === "pairwise");
    show("correction-panel", item.kind === "correction");
    if (item.kind === "rating") {
      $("rating-reply").textContent = item.reply;
    } else if (item.kind === "pairwise") {
      $("reply-a").textContent = item.reply_a;
      $("reply-b").textContent = item.reply_b;
    } else if (item.kind === "correction") {
      $("correction").value = item.reply;
    }
    show("item", true);
    $("item-title").focus();
  }

  function chosen(name) {
    const input = document.querySelector('input[name="' + name + '"]:checked');
    return input ? input.value : null;
  }

  function choose(name, value) {
    const input = document.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (input) {
      input.checked = true;
    }
  }

  function reviewOf(item) {
    if (item.kind === "rating") {
      const rating = chosen("rating");
      if (!rating) {
        return { problem: "Choose a rating from 1 to 5 first." };
      }
      const tags = $("tags")
        .value.split(",")
        .map((tag) => tag.trim())
        .filter((tag) => tag);
      return { body: { rating: Number(rating), tags } };
    }
    if (item.kind === "pairwise") {
      const preferred = chosen("preferred");
      if (!preferred) {
        return { problem: "Choose A, B or tie first." };
      }
      return { body: { preferred } };
    }
    const correction = $("correction").value;
    if (!correction.trim()) {
      return { problem: "Write the better reply first." };
    }
    return { body: { correction } };
  }

  async function submit() {
    const item = state.item;
    if (!item || state.busy) {
      return;
    }
    const review = reviewOf(item);
    if (review.problem) {
      fail(review.problem);
      return;
    }
    state.busy = true;
    try {
      await api("POST", "items/" + encodeURIComponent(item.id) + "/review", review.body);
    } catch (error) {
      state.busy = false;
      handle(error);
      return;
    }
    state.busy = false;
    fail("");
    await refreshProgress();
    await takeNext("Review saved.");
  }

  async function skip() {
    const item = state.item;
    if (!item || state.busy) {
      return;
    }
    state.busy = true;
    try {
      await api("POST", "items/" + encodeURIComponent(item.id) + "/release");
    } catch (error) {
      state.busy = false;
      handle(error);
      return;
    }
    state.busy = false;
    fail("");
    await refreshProgress();
    await takeNext("Item skipped.");
  }

  function dropItem() {
    state.item = null;
    show("item", false);
    $("take").focus();
  }

  function handle(error) {
    if (error instanceof NetworkError) {
      fail(
        "Network error: the gateway could not be reached. Nothing was saved; " +
          "check your connection and try again.",
      );
      return;
    }
    if (!(error instanceof ApiError)) {
      fail("Unexpected error: " + String(error));
      return;
    }
    if (error.status === 401) {
      signOut("Your key was refused (unknown or revoked). Sign in again.");
    } else if (error.status === 403) {
      signOut("Your key may not review: it needs the review scope.");
    } else if (error.code === "lease_expired" || error.code === "not_leased") {
      fail(
        "Your time on this item ran out and it went to another reviewer; " +
          "your answer was not saved. Take the next item.",
      );
      dropItem();
    } else if (error.code === "already_reviewed") {
      fail("You already reviewed this item. Take the next item.");
      dropItem();
    } else if (error.status === 404 && state.item) {
      fail("This item is no longer in the queue. Take the next item.");
      dropItem();
    } else {
      fail(error.message);
    }
  }

  // ---- keyboard ----

  function onKey(event) {
    if (!state.reviewer || event.altKey || event.metaKey || event.isComposing) {
      return;
    }
    const target = event.target;
    const inTextArea = target instanceof HTMLTextAreaElement;
    const inField =
      inTextArea ||
      target instanceof HTMLSelectElement ||
      (target instanceof HTMLInputElement && target.type !== "radio");
    if (event.key === "Enter") {
      if (!state.item || target instanceof HTMLButtonElement || target instanceof HTMLSelectElement) {
        return; // a button or a list answers Enter itself
      }
      if (inTextArea && !event.ctrlKey) {
        return; // a new line
      }
      event.preventDefault();
      submit();
      return;
    }
    if (inField || event.ctrlKey) {
      return; // typing
    }
    const key = event.key.toLowerCase();
    if (key === "n") {
      event.preventDefault();
      takeNext();
      return;
    }
    const item = state.item;
    if (!item) {
      return;
    }
    if (item.kind === "rating" && /^[1-5]$/.test(key)) {
      event.preventDefault();
      choose("rating", key);
    } else if (item.kind === "pairwise" && (key === "a" || key === "b" || key === "t")) {
      event.preventDefault();
      choose("preferred", key === "t" ? "tie" : key);
    } else if (key === "s") {
      event.preventDefault();
      skip();
    }
  }

  // ---- wiring ----

  function start() {
    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (!key) {
        fail("Paste your reviewer key first.");
        $("key").focus();
        return;
      }
      signIn(key, false);
    });
    $("sign-out").addEventListener("click", () => signOut(null));
    $("take").addEventListener("click", () => takeNext());
    $("check-again").addEventListener("click", async () => {
      await refreshProgress();
      await takeNext();
    });
    $("item").addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    $("skip").addEventListener("click", () => skip());
    document.addEventListener("keydown", onKey);

    const remembered = sessionStorage.getItem(STORAGE_KEY);
    if (remembered) {
      signIn(remembered, true);
    } else {
      $("key").focus();
    }
  }

  start();
})();
