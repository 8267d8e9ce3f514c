"""A real browser: JupyterLab runs the classroom walkthrough in headless Chromium, a slider moves, the figure changes;
and a chapter page of the documentation site shows its figures.

Runs only where Chromium and Playwright are installed (`.ci/run` installs Debian's `chromium` when it can; Playwright
comes with the dev requirements). Playwright cannot download its own browser offline, so it drives the system one
through `executable_path`. JupyterLab works on a temporary copy of `nbs/` (it autosaves). Screenshots are kept in
`test-artifacts/browser/` (gitignored) for a person to look at.
"""
import json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (os.environ.get('SND_CHROMIUM'), shutil.which('chromium'), '/usr/bin/chromium') if p and Path(p).exists()), None)
try: from playwright.sync_api import sync_playwright
except ImportError: sync_playwright = None
pytestmark = pytest.mark.skipif(not (CHROMIUM and sync_playwright), reason='needs Chromium (apt-get install chromium) and playwright')
ART = ROOT/'test-artifacts'/'browser'
# --headless --no-sandbox --disable-gpu, and no background networking: the machine's network is closed
CHROME_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
               '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
NOTEBOOK = '16_walkthrough.ipynb'

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "JupyterLab on localhost, no token, on a copy of the notebooks; yields its URL."
    tmp = tmp_path_factory.mktemp('lab')
    shutil.copytree(ROOT/'nbs', tmp/'nbs')
    # user settings: start the notebook's kernel without asking, and never fetch news (the network is closed)
    for name, value in [('notebook-extension/tracker', {'autoStartDefaultKernel': True}),
                        ('apputils-extension/notification', {'fetchNews': 'false', 'checkForUpdates': False})]:
        f = tmp/'settings'/'@jupyterlab'/f'{name}.jupyterlab-settings'
        f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(value))
    port = _free_port()
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])),
           'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'HF_HUB_OFFLINE': '1',
           'JUPYTER_RUNTIME_DIR': str(tmp/'runtime'), 'JUPYTERLAB_WORKSPACES_DIR': str(tmp/'workspaces'),
           'JUPYTER_DATA_DIR': str(tmp/'data'), 'JUPYTERLAB_SETTINGS_DIR': str(tmp/'settings')}
    env.pop('MPLBACKEND', None)   # the kernel's inline backend must draw
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ip=127.0.0.1',
           f'--ServerApp.root_dir={tmp/"nbs"}', "--IdentityProvider.token=", "--ServerApp.password=",
           '--LabApp.expose_app_in_browser=True', '--LabApp.news_url=None',
           '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')
    log = open(tmp/'lab.log', 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{url}/api/status', timeout=2); break
            except Exception:
                if proc.poll() is not None: pytest.fail(f'JupyterLab exited:\n{(tmp/"lab.log").read_text()[-3000:]}')
                time.sleep(0.5)
        else: pytest.fail(f'JupyterLab did not answer on {url}:\n{(tmp/"lab.log").read_text()[-3000:]}')
        yield url
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()

@pytest.fixture(scope='module')
def browser():
    ART.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        yield b
        b.close()

def _counts(page):
    "Execution counts shown in the notebook's prompts ('[3]:' -> 3, '[*]:' -> -1)."
    return page.evaluate('''() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
        .map(e => e.textContent.trim()).filter(t => /\\[.+\\]/.test(t))''')

def _difference(a: Path, b: Path) -> float:
    "Mean absolute pixel difference of two screenshots (0-255), over their common size."
    from PIL import Image, ImageChops
    x, y = Image.open(a).convert('RGB'), Image.open(b).convert('RGB')
    w, h = min(x.width, y.width), min(x.height, y.height)
    d = ImageChops.difference(x.crop((0, 0, w, h)), y.crop((0, 0, w, h)))
    return sum(i * n for i, n in enumerate(d.convert('L').histogram())) / (w * h)

def _log(msg):
    print(f'[browser {time.strftime("%H:%M:%S")}] {msg}', flush=True)

@pytest.fixture
def page(browser, request):
    "A fresh page; on failure its last state is saved as `failed_<test>.png`."
    pg = browser.new_page(viewport={'width': 1400, 'height': 1000})
    pg.set_default_timeout(60_000)
    failed = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failed:
        try: pg.screenshot(path=ART/f'failed_{request.node.name}.png', full_page=True)
        except Exception: pass
    pg.close()

def _accept_dialogs(page):
    "Accept any modal dialog JupyterLab shows (it sometimes asks to 'Select Kernel' for a notebook that already has one)."
    for _ in range(3):
        dlg = page.locator('.jp-Dialog .jp-mod-accept')
        if not dlg.count(): return
        _log(f'accepting dialog: {page.locator(".jp-Dialog").first.inner_text()[:80]!r}')
        dlg.first.click(); page.wait_for_timeout(500)

FIG = '.widget-output img, .jupyter-widgets-output-area img'   # the panel's figure, drawn into an Output widget

def _settled_figure(page, path) -> str:
    "Wait until the panel's figure stops being redrawn (same image for 1.5 s), screenshot it to `path`; returns its src."
    last, since = None, time.time()
    for _ in range(120):
        src = page.evaluate(f'() => {{ const i = document.querySelector("{FIG}"); return i ? i.getAttribute("src") : null }}')
        if src is None or src != last: last, since = src, time.time()
        elif time.time() - since >= 1.5: break
        page.wait_for_timeout(500)
    for attempt in range(5):                                    # a redraw may still replace the element under us
        try:
            fig = page.locator(FIG).first
            fig.scroll_into_view_if_needed(timeout=10_000); fig.screenshot(path=path, timeout=10_000)
            return fig.get_attribute('src')
        except Exception:
            if attempt == 4: raise
            page.wait_for_timeout(1000)

def open_and_run_all(page, url: str):
    "Open the walkthrough in JupyterLab, wait for its kernel, Run All (retried: it sometimes does nothing right after the kernel reports idle) and wait until every cell has run without a traceback."
    _log(f'opening {NOTEBOOK}')
    page.goto(f'{url}/lab/tree/{NOTEBOOK}', timeout=120_000)
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
    page.wait_for_function('() => window.jupyterapp && document.querySelector(".jp-Notebook")', timeout=60_000)
    # wait for the kernel, then Run All; "Run All" sometimes does nothing right after the kernel reports idle: retry
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
    page.wait_for_function('''() => { const w = window.jupyterapp.shell.currentWidget, s = w && w.sessionContext;
        return s && s.isReady && s.session && s.session.kernel && s.session.kernel.status === 'idle' }''', timeout=120_000)
    _log('kernel idle; Run All')
    for attempt in range(4):
        _accept_dialogs(page)
        # fire and forget: the command's promise settles only when every cell has run (or never, if something blocks)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        try:
            page.wait_for_function('''() => [...document.querySelectorAll('.jp-InputArea-prompt')]
                .some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))''', timeout=20_000)
            break
        except Exception:
            _log(f'Run All did not start (attempt {attempt + 1}); retrying')
            page.screenshot(path=ART/f'run_all_attempt{attempt + 1}.png')
            if attempt == 3: pytest.fail('Run All never started executing')
    _log('running')
    _accept_dialogs(page)
    # done: the kernel is idle again, no cell is queued, and the panel's figure is there
    done = '''() => { const p = [...document.querySelectorAll('.jp-InputArea-prompt')].map(e => e.textContent);
        return p.some(t => /\\[\\d+\\]/.test(t)) && !p.some(t => t.includes('[*]')) &&
               !!document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]') }'''
    t0 = time.time()
    while not page.evaluate(done):
        if time.time() - t0 > 540: pytest.fail('the notebook did not finish running within 9 minutes')
        _accept_dialogs(page); page.wait_for_timeout(1000)
    _log('all cells ran')
    page.screenshot(path=ART/'walkthrough_ran.png', full_page=True)
    tracebacks = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]:has-text("Traceback")')
    assert tracebacks.count() == 0, f'a cell failed:\n{tracebacks.first.inner_text()[:3000]}'

def test_walkthrough_runs_and_slider_redraws(lab, page):
    errors = []
    page.on('pageerror', lambda e: errors.append(str(e)))
    open_and_run_all(page, lab)
    slider = page.locator('.widget-slider .noUi-handle, .widget-hslider .noUi-handle').first
    slider.wait_for(timeout=60_000)
    src0 = _settled_figure(page, ART/'walkthrough_before.png')
    _log('moving the slider')
    slider.scroll_into_view_if_needed(); slider.click()
    for _ in range(4): page.keyboard.press('ArrowLeft')          # move the first slider (target pose) four steps
    page.wait_for_function(f'(s0) => {{ const i = document.querySelector("{FIG}"); return i && i.getAttribute("src") !== s0 }}',
                           arg=src0, timeout=120_000)
    _settled_figure(page, ART/'walkthrough_after.png')
    page.screenshot(path=ART/'walkthrough_moved.png', full_page=True)
    diff = _difference(ART/'walkthrough_before.png', ART/'walkthrough_after.png')
    print(f'walkthrough: mean absolute pixel difference after moving the slider: {diff:.2f}')
    assert diff > 1.0, f'the figure did not change after moving the slider (difference {diff:.2f})'
    assert not errors, f'page errors: {errors}'

def test_docs_page_shows_figures(page, docs_site):
    page.goto((docs_site/'05_splat.html').as_uri())
    imgs = page.locator('.jp-OutputArea-output img')
    assert imgs.count() > 0, 'the chapter page has no figure'
    imgs.first.scroll_into_view_if_needed()
    w = imgs.first.evaluate('i => i.complete ? i.naturalWidth : 0')
    assert w > 50, f'the first figure did not load (width {w})'
    page.screenshot(path=ART/'docs_05_splat.png')
    page.goto((docs_site/'index.html').as_uri())
    assert page.locator('a[href="05_splat.html"]').count() >= 1, 'the index does not link the chapter'
    page.screenshot(path=ART/'docs_index.png')

# ---- formulas typeset offline: the site's own MathJax, with every request that leaves the local server blocked ----
sys.path.insert(0, str(ROOT/'bench'))
import build_docs

MATH = '.MathJax, .MathJax_Display, .MathJax_CHTML, .mjx-chtml'   # what MathJax 2.7 leaves (HTML-CSS or CommonHTML output)

@pytest.fixture(scope='module')
def math_sites(tmp_path_factory):
    "Chapter 05 (it has formulas) built with a given MathJax source, once per source."
    built = {}
    def get(source):
        if source not in built:
            out = tmp_path_factory.mktemp(f'math_{source}')/'_docs'
            build_docs.build(out, chapters=['05_splat'], mathjax=source)
            built[source] = out
        return built[source]
    return get

@pytest.fixture
def offline_server():
    "Serves a folder on 127.0.0.1; yields serve(folder) -> base URL."
    import functools, http.server, threading
    servers = []
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    def serve(folder):
        srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, daemon=True).start(); servers.append(srv)
        return f'http://127.0.0.1:{srv.server_address[1]}/'
    yield serve
    for s in servers: s.shutdown(); s.server_close()

def _typeset(page, base: str, name: str, wait_ms: int) -> dict:
    """Open `base + name` with every request not to `base` aborted, give MathJax `wait_ms` to typeset, and report:
    math (typeset elements), raw (markdown text that still shows TeX delimiters), blocked (aborted URLs), missing (404s)."""
    blocked, missing = [], []
    def route(r):
        u = r.request.url
        if u.startswith(base) or u.startswith('data:') or u.startswith('blob:'): r.continue_()
        else: blocked.append(u); r.abort()
    page.route('**/*', route)
    page.on('response', lambda resp: missing.append(resp.url) if resp.status >= 400 else None)
    page.goto(base + name, wait_until='load')
    done = f'''() => window.MathJax && MathJax.Hub && MathJax.Hub.queue && !MathJax.Hub.queue.pending && !MathJax.Hub.queue.running
        && document.querySelectorAll("{MATH}").length > 0 && !document.querySelector(".MathJax_Processing, .MathJax_Preview:not(:empty)")'''
    try: page.wait_for_function(done, timeout=wait_ms, polling=250)
    except Exception: pass
    page.wait_for_timeout(500)
    raw = page.evaluate(r'''() => [...document.querySelectorAll('.jp-RenderedMarkdown')].map(md => {
            const c = md.cloneNode(true);
            c.querySelectorAll('code, pre, script, .MJX_Assistive_MathML').forEach(e => e.remove());
            return c.textContent; })
        .filter(t => /\$\$|\\\(|\\\[|\$[^$\n]*\\[A-Za-z]+/.test(t)).map(t => t.trim().slice(0, 200))''')
    font = page.evaluate('() => { const o = window.MathJax && MathJax.OutputJax; return o && o["HTML-CSS"] && o["HTML-CSS"].fontInUse || null }')
    return dict(math=page.locator(MATH).count(), raw=raw, blocked=blocked, missing=missing, font=font,
                errors=page.locator('.MathJax_Error, .noError, .merror').count())

@pytest.mark.parametrize('source', ['pip', 'debian'])
def test_docs_formulas_typeset_offline(page, math_sites, offline_server, source):
    "With the network closed, chapter 05's formulas are typeset by the site's own MathJax: no raw TeX is left."
    if source == 'debian' and not (build_docs.MATHJAX/'MathJax.js').exists(): pytest.skip('no Debian MathJax (apt-get install libjs-mathjax)')
    if source == 'pip' and build_docs._pip_mathjax() is None: pytest.skip('jupyter-server-mathjax is not installed')
    r = _typeset(page, offline_server(math_sites(source)), '05_splat.html', 60_000)
    _log(f'{source}: {r["math"]} typeset elements, font {r["font"]}, raw {len(r["raw"])}, blocked {r["blocked"]}, missing {r["missing"]}')
    shot = page.locator('.MathJax_Display, .mjx-chtml.MJXc-display').first
    if shot.count(): shot.scroll_into_view_if_needed(); shot.screenshot(path=ART/f'docs_formula_{source}.png')
    assert r['math'] > 0, f'no formula was typeset ({source} MathJax); blocked requests: {r["blocked"]}'
    assert not r['raw'], f'raw TeX is still shown: {r["raw"][:3]}'
    # the pip config's NativeMML styles (unused in Chromium) name TeX .otf fonts that jupyter-server-mathjax does not ship;
    # the formulas are set in its STIX-Web woff fonts, which must all be there
    missing = [u for u in r['missing'] if not (source == 'pip' and '/fonts/HTML-CSS/TeX/otf/' in u)]
    assert not missing, f'the site lacks files MathJax asked for: {missing}'
    if source == 'pip': assert r['font'] == 'STIX-Web', f'HTML-CSS set the formulas in {r["font"]!r}, not the shipped STIX-Web fonts'
    assert not r['blocked'], f'the page tried to reach the network: {r["blocked"]}'
    assert r['errors'] == 0, 'MathJax reported a TeX error'
    w = shot.evaluate('e => e.getBoundingClientRect().width')
    assert w > 50, f'the first display formula is {w} px wide'

def test_docs_formulas_raw_without_local_mathjax(page, math_sites, offline_server):
    "The check above can fail: without a local MathJax (the CDN is blocked) the same page shows raw TeX."
    r = _typeset(page, offline_server(math_sites('none')), '05_splat.html', 5_000)
    assert r['math'] == 0 and r['raw'] and any('mathjax' in u.lower() for u in r['blocked']), r
