// Drives chatd's own chat page in Debian's Chromium, as a user would: `node run.mjs SCENARIO`.
// Started by tests/it/browser.rs, which runs the real chatd and gives its address in CHATD_URL.
//
// When a scenario needs something done outside the browser (another client speaking, the server
// restarted), it prints `@@ {json}` and reads the test's one-line JSON answer from stdin.
// Screenshots go to CHATD_SHOTS. Any failure exits 1 with the reason (and a screenshot).

import readline from 'node:readline';
import { chromium } from 'playwright-core';

const URL_ = process.env.CHATD_URL;
const SHOTS = process.env.CHATD_SHOTS || '.';
const WAIT = 15000;
const scenario = process.argv[2];

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
/** Asks the Rust test to do something; resolves to its answer. */
async function ask(op) {
  console.log(`@@ ${JSON.stringify(op)}`);
  const { value, done } = await lines.next();
  if (done) throw new Error(`no answer to ${op.op}`);
  const answer = JSON.parse(value);
  if (answer.error) throw new Error(`${op.op}: ${answer.error}`);
  return answer;
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-dev-shm-usage'],
});
const pages = [];

/** A fresh browser profile on the chat page; records errors, dialogs and policy violations. */
async function visit(label, { viewport = { width: 1280, height: 800 }, https = false } = {}) {
  const context = await browser.newContext({ viewport, ignoreHTTPSErrors: https, locale: 'en-GB' });
  const page = await context.newPage();
  page.label = label;
  page.problems = [];
  page.dialogs = [];
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') page.problems.push(`console: ${m.text()}`); });
  page.on('dialog', (d) => { page.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  pages.push(page);
  await page.goto(URL_);
  return page;
}

/** Signs in from the page's form and waits until the chat shows. */
async function signIn(page, name, room) {
  await page.getByLabel('Name').fill(name);
  if (room) {
    await page.getByText('More options').click();
    await page.getByLabel('Room').fill(room);
  }
  await page.getByRole('button', { name: 'Join chat' }).click();
  await page.getByRole('status').filter({ hasText: `Connected as ${name}` }).waitFor({ timeout: WAIT });
}

async function open(name, opts = {}) {
  const page = await visit(name, opts);
  await signIn(page, name, opts.room);
  return page;
}

const messages = (page) => page.getByRole('list', { name: 'Messages' });
/** The message lines (not system notes) containing `text`. */
const lineWith = (page, text) => messages(page).locator('li.msg', { hasText: text });
async function see(page, text) {
  await lineWith(page, text).first().waitFor({ timeout: WAIT });
  return lineWith(page, text).first();
}
async function seeNote(page, text) {
  await messages(page).locator('li:not(.msg)', { hasText: text }).first().waitFor({ timeout: WAIT });
}
/** Types a line in the composer and sends it with Enter. */
async function write(page, text) {
  const box = page.getByLabel('Message', { exact: true });
  await box.fill(text);
  await box.press('Enter');
}
/** Waits until the line with `text` is acknowledged (no longer pending) and returns it. */
async function sent(page, text) {
  const own = messages(page).locator('li.msg.own:not(.pending)', { hasText: text });
  await own.first().waitFor({ timeout: WAIT });
  return own.first();
}
const conversation = (page, label) => page.getByRole('navigation', { name: 'Conversations' })
  .getByRole('button', { name: new RegExp(`^${label.replace(/[#@]/g, '\\$&')}\\b`) });
async function count(locator, want, what) {
  const deadline = Date.now() + WAIT;
  let n;
  while ((n = await locator.count()) !== want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  check(n === want, `${what}: ${n}, want ${want}`);
}
/** No script errors, console errors (but `allowed` ones) or dialogs on the page. */
function noProblems(page, allowed = null) {
  const problems = page.problems.filter((p) => !(allowed && allowed.test(p)));
  check(problems.length === 0, `${page.label}: ${problems.join('; ')}`);
  check(page.dialogs.length === 0, `${page.label}: dialogs ${page.dialogs.join('; ')}`);
}

// ---- scenarios ---------------------------------------------------------------------------------

const scenarios = {
  /** A crowd in a large room: batched join/leave notes, the member list and count follow. */
  async crowd() {
    const alice = await open('alice');
    await ask({ op: 'crowd', join: 12, leave: 4 });
    // Everyone joined before anyone left: the last joiner shows, then the count falls to alice +
    // guest04..guest11, and the list agrees.
    const members = alice.getByRole('list', { name: 'Members', exact: true });
    await members.getByText('guest11', { exact: true }).waitFor({ timeout: WAIT });
    await alice.locator('#members-title', { hasText: 'Members (9)' }).waitFor({ timeout: WAIT });
    await seeNote(alice, 'left (9 here)');
    await count(members.getByText('guest00', { exact: true }), 0, 'one who left is not listed');
    await count(members.locator('li'), 9, 'members listed');
    await alice.screenshot({ path: `${SHOTS}/crowd.png` });
    noProblems(alice);
  },
  /** Two people (and a chatctl-like client) talk: typing, own lines, /me, rooms, unread, PMs. */
  async conversation() {
    const alice = await open('alice');
    const bob = await open('bob');
    // Labelled controls: what a screen reader (and this test) finds them by.
    for (const [role, name] of [['list', 'Messages'], ['list', 'Members'], ['list', 'Rooms'],
      ['button', 'Send'], ['textbox', 'Message']]) {
      await count(bob.getByRole(role, { name, exact: true }), 1, `a ${role} named ${name}`);
    }
    // Members with roles; yourself marked.
    const members = bob.getByRole('list', { name: 'Members', exact: true });
    await members.getByText('alice', { exact: true }).waitFor({ timeout: WAIT });
    await members.getByText('bob (you)').waitFor({ timeout: WAIT });
    await seeNote(alice, 'bob joined');

    // Typing shows while alice types and clears when her line arrives.
    await alice.getByLabel('Message', { exact: true }).pressSequentially('hello b');
    await bob.locator('#typing', { hasText: 'alice is typing…' }).waitFor({ timeout: WAIT });
    await alice.getByLabel('Message', { exact: true }).pressSequentially('ob');
    await alice.getByLabel('Message', { exact: true }).press('Enter');
    const mine = await sent(alice, 'hello bob');
    check(await mine.locator('.from').textContent() === 'alice', 'own line shows the sender');
    check(/^\d{2}:\d{2}$/.test(await mine.locator('time').textContent()), 'own line has a time');
    await see(bob, 'hello bob');
    await bob.waitForFunction(() => document.getElementById('typing').textContent === '', null, { timeout: WAIT });
    await count(lineWith(alice, 'hello bob'), 1, 'alice sees her line once');

    // Another client (not a browser) is seen by both; a mention is highlighted.
    await ask({ op: 'say', name: 'carol', room: 'lobby', text: 'hi all, alice: welcome' });
    await see(bob, 'hi all, alice: welcome');
    const mention = await see(alice, 'hi all, alice: welcome');
    check((await mention.getAttribute('class')).includes('mention'), 'the mention is highlighted');
    check(!(await (await see(bob, 'hi all')).getAttribute('class')).includes('mention'), 'no mention for bob');

    // /me
    await write(bob, '/me waves');
    const action = await see(alice, 'waves');
    check((await action.getAttribute('class')).includes('action'), '/me is an action');

    // A second room, with an unread count while you look elsewhere.
    await write(alice, '/join dev');
    await alice.getByRole('heading', { name: '#dev' }).waitFor({ timeout: WAIT });
    await write(bob, '/join dev');
    await bob.getByRole('heading', { name: '#dev' }).waitFor({ timeout: WAIT });
    await conversation(bob, '#lobby').click();
    await bob.getByRole('heading', { name: '#lobby' }).waitFor({ timeout: WAIT });
    await write(alice, 'news in dev');
    await sent(alice, 'news in dev');
    await conversation(bob, '#dev').getByLabel('1 unread').waitFor({ timeout: WAIT });
    await conversation(bob, '#dev').click();
    await see(bob, 'news in dev');
    await count(conversation(bob, '#dev').locator('.badge'), 0, 'the badge clears when read');

    // A private conversation.
    await write(alice, '/msg bob psst, a secret');
    await alice.getByRole('heading', { name: 'Private: bob' }).waitFor({ timeout: WAIT });
    await sent(alice, 'psst, a secret');
    await conversation(bob, '@alice').getByLabel(/1 unread, mentions you/).waitFor({ timeout: WAIT });
    await conversation(bob, '@alice').click();
    await see(bob, 'psst, a secret');
    await write(bob, 'got it');
    await see(alice, 'got it');

    // /leave says where you are afterwards; an unknown command explains the commands.
    await conversation(alice, '#dev').click();
    await write(alice, '/leave');
    await alice.getByRole('heading', { name: '#lobby' }).waitFor({ timeout: WAIT });
    await count(conversation(alice, '#dev'), 0, 'the room is gone from the list');
    await write(alice, '/frobnicate');
    await seeNote(alice, 'Unknown command /frobnicate');

    // A name in use is refused with a clear message, and the form stays usable.
    const third = await visit('alice-again');
    await third.getByLabel('Name').fill('alice');
    await third.getByRole('button', { name: 'Join chat' }).click();
    await third.getByRole('alert').filter({ hasText: 'That name is taken' }).waitFor({ timeout: WAIT });
    await signIn(third, 'alice2');

    // Notifications: asked for once by a button; then a PM or a mention while the tab is hidden
    // shows one (the browser's own pop-up is replaced by a recorder: headless shows none).
    await bob.context().grantPermissions(['notifications']);
    const notify = bob.getByRole('button', { name: 'Notify me' });
    await notify.click();
    await notify.waitFor({ state: 'hidden', timeout: WAIT });
    await bob.evaluate(() => {
      window.shown = [];
      window.Notification = function Recorder(title, options) { window.shown.push([title, options.body]); };
      window.Notification.permission = 'granted';
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    });
    await write(alice, '/msg bob are you there?');
    await sent(alice, 'are you there?');
    await bob.waitForFunction(() => window.shown.length === 1, null, { timeout: WAIT });
    const shown = await bob.evaluate(() => window.shown);
    check(JSON.stringify(shown) === JSON.stringify([['alice', 'are you there?']]), `notified: ${JSON.stringify(shown)}`);

    await conversation(alice, '#lobby').click();
    await alice.screenshot({ path: `${SHOTS}/desktop.png` });
    // The narrow layout (a phone), used with the keyboard only: the form submits on Enter.
    const mia = await visit('mia', { viewport: { width: 360, height: 740 } });
    await mia.keyboard.type('mia');
    await mia.keyboard.press('Enter');
    await mia.getByRole('status').filter({ hasText: 'Connected as mia' }).waitFor({ timeout: WAIT });
    check(await mia.evaluate(() => document.activeElement.id) === 'message', 'the composer has the focus');
    await see(mia, 'waves');
    await write(mia, 'hello from a phone');
    await see(alice, 'hello from a phone');
    const box = await mia.getByLabel('Message', { exact: true }).boundingBox();
    check(box && box.x >= 0 && box.x + box.width <= 360, `the composer fits 360px: ${JSON.stringify(box)}`);
    await mia.getByRole('button', { name: 'Members' }).click();
    await mia.getByRole('complementary', { name: /Members/ }).getByText('alice', { exact: true }).waitFor({ timeout: WAIT });
    await mia.screenshot({ path: `${SHOTS}/narrow-members.png` });
    await mia.keyboard.press('Escape');
    await mia.screenshot({ path: `${SHOTS}/narrow.png` });
    // A new name: said on the page, seen by the others, and kept for the next line.
    await write(mia, '/nick mia_phone');
    await seeNote(mia, 'You are now mia_phone.');
    await seeNote(alice, 'mia is now known as mia_phone');
    await alice.getByRole('list', { name: 'Members', exact: true }).getByText('mia_phone', { exact: true })
      .waitFor({ timeout: WAIT });
    await write(mia, 'renamed and still here');
    const renamed = await see(alice, 'renamed and still here');
    check(await renamed.locator('.from').textContent() === 'mia_phone', 'the new name on the line');
    for (const p of [alice, bob, third, mia]) noProblems(p);
  },

  /** History on join, then older pages by scrolling up, back to the first message. */
  async history() {
    const { said } = await ask({ op: 'info' });
    const page = await open('reader');
    await see(page, `old message ${said}`);
    // The first page is the server's on-join history, not everything.
    await count(lineWith(page, /^.*old message 1$/), 0, 'the first message is not on the first page');
    for (let i = 0; i < 20 && (await lineWith(page, /old message 1$/).count()) === 0; i++) {
      await page.locator('#scroller').evaluate((s) => { s.scrollTop = 0; s.dispatchEvent(new Event('scroll')); });
      await page.waitForTimeout(100);
    }
    await see(page, /old message 1$/);
    const seqs = await messages(page).locator('li.msg').evaluateAll((ls) => ls.map((l) => Number(l.dataset.seq)));
    check(seqs.length === said, `${said} messages, each once: ${seqs.length}`);
    check(seqs.every((s, i) => i === 0 || s === seqs[i - 1] + 1), 'in order with no gaps');
    await count(page.getByRole('button', { name: 'Load older messages' }), 0, 'nothing older to load');
    noProblems(page);
    // Three days later (the page's clock moved on): the same lines carry their date.
    const later = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-GB' });
    await later.clock.setFixedTime(new Date(Date.now() + 3 * 86400e3));
    const reread = await later.newPage();
    reread.label = 'later'; reread.problems = []; reread.dialogs = [];
    pages.push(reread);
    await reread.goto(URL_);
    await signIn(reread, 'rereader');
    const stamp = await (await see(reread, `old message ${said}`)).locator('time').textContent();
    const said_on = new Intl.DateTimeFormat('en-GB', { weekday: 'short', day: 'numeric', month: 'short' }).format(new Date());
    check(stamp.startsWith(said_on), `a line from another day shows its date: ${stamp} (want ${said_on} …)`);
    const today = await (await see(page, `old message ${said}`)).locator('time').textContent();
    check(/^\d{2}:\d{2}$/.test(today), `today's line shows only the time: ${today}`);
  },

  /** What others send is text: no markup, no script, no bidi tricks; injected script is blocked. */
  async hostile() {
    const page = await open('victim');
    const attacks = [
      '<img src=x onerror=alert(1)>',
      '<script>alert(2)</script>',
      'pay \u202Egnp.exe attached',
      'click javascript:alert(3) now',
      'read https://example.com/a?b=<c> and <a href="https://evil.example">this</a>',
    ];
    for (const text of attacks) await ask({ op: 'say', name: 'mallory', room: 'lobby', text });
    await see(page, 'https://example.com/a?b=');
    for (const text of attacks.slice(0, 2)) {
      const line = await see(page, text);
      check(await line.locator('.text').textContent() === text, `shown literally: ${text}`);
    }
    const bidi = await see(page, 'gnp.exe attached');
    check(!(await bidi.textContent()).includes('\u202E'), 'the bidi override is removed');
    await count(messages(page).locator('img, script, iframe'), 0, 'no elements from message text');
    // Only http(s) addresses become links (each showing its own address, opening without a referrer).
    const links = await messages(page).locator('a').evaluateAll((as) => as.map((a) => ({
      href: a.getAttribute('href'), rel: a.rel, target: a.target, text: a.textContent,
    })));
    check(links.some((l) => l.href === 'https://example.com/a?b='), `the link: ${JSON.stringify(links)}`);
    for (const l of links) {
      check(/^https:\/\//.test(l.href) && l.href.startsWith(l.text) && l.rel === 'noopener noreferrer'
        && l.target === '_blank', `a safe link: ${JSON.stringify(l)}`);
    }

    // The policy: injected inline script and inline handlers do not run. (Code run by the test
    // through DevTools is exempt from the policy, so `eval` is checked in the header instead.)
    const outcome = await page.evaluate(async () => {
      const seen = [];
      document.addEventListener('securitypolicyviolation', (e) => seen.push(e.violatedDirective));
      const s = document.createElement('script');
      s.textContent = 'window.pwned = 1';
      document.body.append(s);
      const b = document.createElement('button');
      b.setAttribute('onclick', 'window.pwned = 2');
      document.body.append(b);
      b.click();
      await new Promise((r) => setTimeout(r, 200));
      return { pwned: window.pwned ?? null, seen };
    });
    check(outcome.pwned === null, `injected script ran: ${JSON.stringify(outcome)}`);
    check(outcome.seen.some((d) => d.startsWith('script-src')), `violations reported: ${outcome.seen}`);
    check(page.dialogs.length === 0, `no dialog: ${page.dialogs}`);
    check(page.problems.every((p) => p.includes('Content Security Policy')), `only the policy complained: ${page.problems}`);
  },

  /** The server restarts: the page says so, reconnects by itself and shows what it missed, once. */
  async restart() {
    const page = await open('alice');
    await ask({ op: 'say', name: 'carol', room: 'lobby', text: 'before the restart' });
    await see(page, 'before the restart');
    await write(page, 'mine before');
    await sent(page, 'mine before');
    await ask({ op: 'restart', said: [{ name: 'carol', room: 'lobby', text: 'said while you were away' }] });
    await seeNote(page, 'Server: server is shutting down');
    // Back-off with jitter (at most 5 s apart while the server restarts), on a busy machine.
    await messages(page).locator('li:not(.msg)', { hasText: 'Reconnected as alice' }).waitFor({ timeout: 4 * WAIT });
    await page.getByRole('status').filter({ hasText: 'Connected as alice' }).waitFor({ timeout: WAIT });
    await see(page, 'said while you were away');
    for (const text of ['before the restart', 'mine before', 'said while you were away']) {
      await count(lineWith(page, text), 1, `"${text}" shown once`);
    }
    // And the chat goes on.
    await write(page, 'after the restart');
    await sent(page, 'after the restart');
    const { heard } = await ask({ op: 'hear', name: 'carol', text: 'after the restart' });
    check(heard, 'another client hears the page after the restart');
    // Search finds the stored history, across the restart (indexing trails commits slightly).
    const results = page.getByRole('list', { name: 'Search results' });
    for (let i = 0; i < 50; i++) {
      await page.getByRole('searchbox', { name: 'Search' }).fill('restart');
      await page.getByRole('searchbox', { name: 'Search' }).press('Enter');
      await results.locator('li', { hasText: 'after the restart' }).or(results.locator('li.system', { hasText: 'Nothing found' }))
        .first().waitFor({ timeout: WAIT });
      if (await results.locator('li', { hasText: 'after the restart' }).count()) break;
      await page.waitForTimeout(100);
    }
    await results.locator('li', { hasText: 'before the restart' }).waitFor({ timeout: WAIT });
    await results.locator('li', { hasText: 'after the restart' }).waitFor({ timeout: WAIT });
    await page.screenshot({ path: `${SHOTS}/search.png` });
    await page.getByRole('button', { name: 'Close' }).click();
    // While the server was down, Chromium logs the refused connection attempts.
    noProblems(page, /WebSocket connection to .* failed/);
  },

  /** In token mode the name needs its token: refused without, in words; accepted with. */
  async token() {
    const page = await visit('tokenuser');
    await page.getByLabel('Name').fill('tokenuser');
    await page.getByRole('button', { name: 'Join chat' }).click();
    await page.getByRole('alert').filter({ hasText: 'token the server did not accept' }).waitFor({ timeout: WAIT });
    // The token field is shown (it was folded away), and the form still works.
    await page.getByLabel('Token').waitFor({ timeout: WAIT });
    const { token } = await ask({ op: 'token', name: 'tokenuser' });
    await page.getByLabel('Token').fill(token);
    await page.getByRole('button', { name: 'Join chat' }).click();
    await page.getByRole('status').filter({ hasText: 'Connected as tokenuser' }).waitFor({ timeout: WAIT });
    await write(page, 'signed in with a token');
    await sent(page, 'signed in with a token');
    noProblems(page, /WebSocket connection to .* failed/);
  },

  /** Accounts: register from the form, chat, reload, a wrong password, then sign in again. */
  async accounts() {
    const page = await visit('ann');
    const signIn = async (password, label = 'Join chat') => {
      await page.getByLabel('Name').fill('ann');
      await page.getByLabel('Password').fill(password);
      await page.getByRole('button', { name: label }).click();
    };
    await page.getByLabel('Create this account').check();
    await signIn('ann password', 'Create account and join');
    await page.getByRole('status').filter({ hasText: 'Connected as ann' }).waitFor({ timeout: WAIT });
    await write(page, 'hello as an account');
    await sent(page, 'hello as an account');
    await write(page, '/join dev');
    const rooms = page.getByRole('list', { name: 'Rooms' });
    await rooms.getByText('#dev').waitFor({ timeout: WAIT });
    await page.screenshot({ path: `${SHOTS}/accounts-registered.png` });

    // Away (the page reloaded, not signed in): someone mentions ann in #dev.
    await page.reload();
    const { said } = await ask({ op: 'say_in_dev', text: '@ann while you were away' });
    check(said, 'the other client said it');
    await signIn('not the password');
    await page.getByRole('alert').filter({ hasText: 'Wrong name or password' }).waitFor({ timeout: WAIT });
    await page.screenshot({ path: `${SHOTS}/accounts-wrong-password.png` });
    await signIn('ann password');
    await page.getByRole('status').filter({ hasText: 'Connected as ann' }).waitFor({ timeout: WAIT });
    // The account's rooms come back after the reload, with what is unread, kept by the server.
    await conversation(page, '#dev').getByLabel('1 unread, mentions you').waitFor({ timeout: WAIT });
    await page.screenshot({ path: `${SHOTS}/accounts-unread.png` });
    await see(page, 'hello as an account');
    const { heard } = await ask({ op: 'signed_in', name: 'ann' });
    check(heard, 'another client saw ann in the lobby');
    // Reading #dev on the page clears it on the server: after another reload, no badge.
    await conversation(page, '#dev').click();
    await see(page, 'while you were away');
    const { read } = await ask({ op: 'read_by', name: 'ann', room: 'dev' });
    check(read, 'the server has ann\'s marker at the mention');
    await page.reload();
    await signIn('ann password');
    await page.getByRole('status').filter({ hasText: 'Connected as ann' }).waitFor({ timeout: WAIT });
    await rooms.getByText('#dev').waitFor({ timeout: WAIT });
    await count(conversation(page, '#dev').getByLabel(/unread/), 0, 'no badge once read');
    noProblems(page, /WebSocket connection to .* failed/);
  },

  /**
   * Two devices of one account (two pages): both signed in at once; a room joined on one is
   * joined on the other; a mention read on one clears the badge on the other, and a reload of
   * the other keeps it cleared (the server has the marker).
   */
  async twoDevices() {
    const signIn = async (page) => {
      await page.getByLabel('Name').fill('ann');
      await page.getByLabel('Password').fill('ann password');
      await page.getByRole('button', { name: 'Join chat' }).click();
      await page.getByRole('status').filter({ hasText: 'Connected as ann' }).waitFor({ timeout: WAIT });
    };
    const laptop = await visit('laptop');
    await signIn(laptop);
    const phone = await visit('phone', { viewport: { width: 1024, height: 700 } });
    await signIn(phone);
    await write(laptop, '/join dev');
    await laptop.getByRole('heading', { name: '#dev' }).waitFor({ timeout: WAIT });
    // The phone joins #dev too, told by the server; it stays on #lobby.
    await conversation(phone, '#dev').waitFor({ timeout: WAIT });
    const { said } = await ask({ op: 'say_in_dev', text: '@ann deploy done' });
    check(said, 'the other client said it');
    await see(laptop, 'deploy done');
    // The laptop shows #dev: it read the mention, so the phone's badge goes.
    await conversation(phone, '#dev').getByLabel(/unread/).waitFor({ state: 'detached', timeout: WAIT });
    await phone.screenshot({ path: `${SHOTS}/two-devices-phone.png` });
    await phone.reload();
    await signIn(phone);
    await conversation(phone, '#dev').waitFor({ timeout: WAIT });
    await count(conversation(phone, '#dev').getByLabel(/unread/), 0, 'still read after a reload');
    noProblems(laptop);
    noProblems(phone, /WebSocket connection to .* failed/);
  },

  /** A PM that waited for ann is counted at sign-in, shown in its conversation, and read there. */
  async waitingPm() {
    const signIn = async (page) => {
      await page.getByLabel('Name').fill('ann');
      await page.getByLabel('Password').fill('ann password');
      await page.getByRole('button', { name: 'Join chat' }).click();
      await page.getByRole('status').filter({ hasText: 'Connected as ann' }).waitFor({ timeout: WAIT });
    };
    const page = await visit('ann');
    await signIn(page);
    const bob = conversation(page, '@bob');
    await bob.getByLabel(/1 unread/).waitFor({ timeout: WAIT });
    await page.screenshot({ path: `${SHOTS}/waiting-pm-badge.png` });
    await bob.click();
    await see(page, 'while you were away');
    await bob.getByLabel(/unread/).waitFor({ state: 'detached', timeout: WAIT });
    const { read } = await ask({ op: 'read_by_ann' });
    check(read, 'the server has it read');
    await page.reload();
    await signIn(page);
    await conversation(page, '@bob').waitFor({ timeout: WAIT });
    await count(conversation(page, '@bob').getByLabel(/unread/), 0, 'still read after a reload');
    noProblems(page, /WebSocket connection to .* failed/);
  },

  /** ann owns the room she makes: sets its topic, mutes and bans bob from his name's menu. */
  async moderation() {
    const page = await visit('ann');
    await page.getByLabel('Name').fill('ann');
    await page.getByLabel('Password').fill('ann password');
    await page.getByLabel('Create this account').check();
    await page.getByRole('button', { name: 'Create account and join' }).click();
    await page.getByRole('status').filter({ hasText: 'Connected as ann' }).waitFor({ timeout: WAIT });
    await write(page, '/join team');
    await page.getByRole('heading', { name: '#team' }).waitFor({ timeout: WAIT });
    // She made it: she owns it.
    const members = page.getByRole('list', { name: /Members/ });
    await members.locator('.role.owner').waitFor({ timeout: WAIT });
    await write(page, '/topic Ship it on Friday');
    await page.locator('#room-topic', { hasText: 'Ship it on Friday' }).waitFor({ timeout: WAIT });
    const { joined } = await ask({ op: 'bob_joins' });
    check(joined, 'bob joined #team');
    const menu = members.locator('details.member-menu');
    await page.getByLabel('Moderate bob').waitFor({ timeout: WAIT });
    await page.getByLabel('Moderate bob').click();
    await page.getByRole('button', { name: 'Mute for 10 minutes' }).click();
    await seeNote(page, 'bob is muted for 10 minutes');
    const { refused } = await ask({ op: 'bob_says' });
    check(refused, 'bob may not speak');
    await write(page, '/private');
    await conversation(page, '#team').getByText('private').waitFor({ timeout: WAIT });
    await page.locator('#room-topic', { hasText: 'private' }).waitFor({ timeout: WAIT });
    await page.screenshot({ path: `${SHOTS}/moderation.png` });
    await page.getByLabel('Moderate bob').click();
    await page.getByRole('button', { name: 'Ban for a day' }).click();
    await seeNote(page, 'bob was kicked by ann');
    const { out } = await ask({ op: 'bob_is_out' });
    check(out, 'bob is out of #team and cannot come back');
    check(await menu.count() === 0, 'nobody left to moderate');
    noProblems(page);
  },

  /** Edit, react, reply and delete between two pages; bob's reload shows the same. */
  async lifecycle() {
    const ann = await open('ann');
    const bob = await open('bob');
    await write(ann, 'helo wrold');
    await sent(ann, 'helo wrold');
    await see(bob, 'helo wrold');
    // ↑ in the empty box edits her last message.
    await ann.getByLabel('Message', { exact: true }).press('ArrowUp');
    await ann.locator('#composing', { hasText: 'Editing' }).waitFor({ timeout: WAIT });
    await write(ann, 'hello world');
    await lineWith(ann, 'hello world').locator('.edited').waitFor({ timeout: WAIT });
    const theirs = await see(bob, 'hello world');
    await theirs.locator('.edited').waitFor({ timeout: WAIT });
    // Bob reacts from the message's menu; ann adds hers with the chip.
    await theirs.getByLabel('Message actions').click();
    await theirs.getByRole('button', { name: 'React 👍' }).click();
    await theirs.locator('.chip.mine', { hasText: '👍 1' }).waitFor({ timeout: WAIT });
    const mine = lineWith(ann, 'hello world');
    await mine.locator('.chip', { hasText: '👍 1' }).click();
    await mine.locator('.chip.mine', { hasText: '👍 2' }).waitFor({ timeout: WAIT });
    await theirs.locator('.chip', { hasText: '👍 2' }).waitFor({ timeout: WAIT });
    // Bob replies: the reply quotes the first line of what it answers.
    await theirs.getByLabel('Message actions').click();
    await theirs.getByRole('button', { name: 'Reply' }).click();
    await bob.locator('#composing', { hasText: 'Replying to ann' }).waitFor({ timeout: WAIT });
    await write(bob, 'agreed');
    await lineWith(ann, 'agreed').locator('.quote', { hasText: 'ann: hello world' }).waitFor({ timeout: WAIT });
    // Ann deletes something she should not have said.
    await write(ann, 'my secret is 1234');
    const oops = await sent(ann, 'my secret is 1234');
    await see(bob, 'my secret is 1234');
    await oops.getByLabel('Message actions').click();
    await oops.getByRole('button', { name: 'Delete' }).click();
    await count(lineWith(bob, 'my secret is 1234'), 0, 'the deleted text is gone from bob\'s page');
    await messages(bob).locator('li.msg.deleted', { hasText: 'message deleted' }).waitFor({ timeout: WAIT });
    await bob.screenshot({ path: `${SHOTS}/lifecycle.png` });
    // After a reload bob sees the same: edited, two reactions (one his), the reply, the tombstone.
    await bob.reload();
    await signIn(bob, 'bob');
    const again = await see(bob, 'hello world');
    await again.locator('.edited').waitFor({ timeout: WAIT });
    await again.locator('.chip.mine', { hasText: '👍 2' }).waitFor({ timeout: WAIT });
    await lineWith(bob, 'agreed').locator('.quote', { hasText: 'hello world' }).waitFor({ timeout: WAIT });
    await messages(bob).locator('li.msg.deleted').waitFor({ timeout: WAIT });
    await count(lineWith(bob, 'my secret is 1234'), 0, 'not after a reload either');
    noProblems(ann);
    noProblems(bob, /WebSocket connection to .* failed/);
  },

  /** The page over https connects over wss:// to the same origin. */
  async tls() {
    const page = await open('secure', { https: true });
    check(page.url().startsWith('https://'), page.url());
    await write(page, 'over tls');
    await sent(page, 'over tls');
    const { heard } = await ask({ op: 'hear', name: 'plain', text: 'over tls' });
    check(heard, 'the other client heard it');
    noProblems(page);
  },
};

let failed = null;
try {
  if (!scenarios[scenario]) throw new Error(`no scenario ${scenario}`);
  await scenarios[scenario]();
} catch (e) {
  failed = e;
  for (const p of pages) {
    await p.screenshot({ path: `${SHOTS}/failed-${scenario}-${p.label}.png` }).catch(() => {});
    console.error(`${p.label} problems: ${p.problems.join('; ') || 'none'}`);
  }
}
await browser.close();
if (failed) {
  console.error(`FAILED ${scenario}: ${failed.stack || failed}`);
  process.exit(1);
}
console.log(`ok ${scenario}`);
process.exit(0);
