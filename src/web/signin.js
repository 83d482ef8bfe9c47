// chatd's browser client, part 5 of 6 (web/mod.rs joins them into the page's one script): the
// sign-in form, and what this browser calls itself in the user's `sessions`.
const chatdSignIn = ({ st, connect }) => {
  const { $, ERRORS } = chatdKit;

  /** "Firefox on Linux": what `sessions` shows of this page (at most 32 characters). */
  function deviceName() {
    const ua = navigator.userAgent;
    const browser = [['Edg/', 'Edge'], ['OPR/', 'Opera'], ['Firefox/', 'Firefox'], ['Chrome/', 'Chrome'], ['Safari/', 'Safari']]
      .find(([needle]) => ua.includes(needle));
    const os = [['Android', 'Android'], ['iPhone', 'iPhone'], ['iPad', 'iPad'], ['Windows', 'Windows'], ['Mac OS', 'macOS'], ['Linux', 'Linux']]
      .find(([needle]) => ua.includes(needle));
    return `${browser ? browser[1] : 'browser'}${os ? ` on ${os[1]}` : ''}`.slice(0, 32);
  }
  st.device = deviceName();

  $('login-name').value = localStorage.getItem('chatd.name') || '';
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('login-name').value.trim();
    if (!/^[A-Za-z0-9_.-]{1,32}$/.test(name)) {
      $('login-error').textContent = ERRORS.name_invalid;
      $('login-name').focus();
      return;
    }
    st.wanted = name; st.asked = name;
    st.token = $('login-token').value.trim();
    st.password = $('login-password').value;
    st.register = $('login-register').checked;
    st.invite = $('login-invite').value.trim();
    if (st.register && !st.password) {
      $('login-error').textContent = 'Choose a password for the new account.';
      $('login-password').focus();
      return;
    }
    st.home = ($('login-room').value.replace(/^#/, '').trim().toLowerCase()) || 'lobby';
    st.stopped = false;
    st.attempt = 0;
    $('login-error').textContent = '';
    $('login-go').disabled = true;
    connect();
  });
  $('login-register').addEventListener('change', () => {
    const on = $('login-register').checked;
    $('login-invite-row').hidden = !on;
    $('login-password').autocomplete = on ? 'new-password' : 'current-password';
    $('login-go').textContent = on ? 'Create account and join' : 'Join chat';
  });
  $('login-name').focus();
};
