"Every command's `--help` and `--version` (issue 21): one set of conventions, help texts that say what the options do."
import configparser, contextlib, importlib, io, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def commands() -> dict[str, str]:
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    return dict(s.split('=') for s in cfg['DEFAULT']['console_scripts'].split())

def run(target: str, argv: list[str]) -> tuple[int, str]:
    mod, func = target.split(':')
    out, code = io.StringIO(), None
    with contextlib.redirect_stdout(out):
        try: getattr(importlib.import_module(mod), func)(argv)
        except SystemExit as e: code = e.code
    return code, out.getvalue()

WRITES_RUNS = {'snd_recon', 'snd_train', 'snd_probe', 'snd_demo', 'snd_reconkd', 'snd_fit3d', 'snd_study'}

@pytest.mark.parametrize('name', sorted(commands()))
def test_help(name):
    code, text = run(commands()[name], ['--help'])
    assert code == 0 and text.startswith(f'usage: {name} '), text[:200]
    assert '--version' in text and '--help' in text
    assert not re.search(r'--(no_progress|quiet)\b', text), 'progress is --progress/--no-progress everywhere'
    assert 'outputs/' not in text and 'probe_results' not in text, 'one default output root: runs/'
    assert '--set syntax: chapter 00.' not in text, 'the --set syntax lives in chapter 00a'
    if name in WRITES_RUNS:
        flat = ' '.join(text.split())
        assert '--resume' in text and '--overwrite' in text and '--set KEY=VALUE' in text
        assert 'removes only the files it wrote (other files are kept)' in flat, 'the --overwrite help says what it keeps'
        assert 'finished runs are kept' not in flat and 'finished stages are kept)' not in flat.split('--overwrite')[1][:200]
        assert '--progress, --no-progress' in text
    if name in ('snd_demo', 'snd_study', 'snd_fit3d'): assert '--seeds SEED [SEED ...]' in text

@pytest.mark.parametrize('name', sorted(commands()))
def test_version(name):
    from splat_and_distill import __version__
    code, text = run(commands()[name], ['--version'])
    assert code == 0 and text.strip() == f'{name} (splat_and_distill {__version__})'

def test_seeds_in_both_spellings():
    from splat_and_distill.runs import cli_parser, add_seeds_option
    p = cli_parser('x', 'x'); add_seeds_option(p, 'seeds')
    assert p.parse_args(['--seeds', '0,1,2']).seeds == p.parse_args(['--seeds', '0', '1', '2']).seeds == (0, 1, 2)
    with pytest.raises(SystemExit): p.parse_args(['--seeds', '0,x'])

def test_config_file_round_trip(tmp_path):
    "`--print_config` writes what `--config FILE` reads; options on the command line still win."
    from splat_and_distill.train import snd_train
    out = io.StringIO()
    with contextlib.redirect_stdout(out): snd_train(['--print_config', '--preset', 'cpu_demo', '--lr', '3e-4', '--no-progress'])
    (tmp_path / 'c.json').write_text(out.getvalue())
    cfg = snd_train(['--print_config', '--config', str(tmp_path / 'c.json'), '--steps', '7'])['config']
    assert (cfg['lr'], cfg['progress'], cfg['steps']) == (3e-4, False, 7)
    (tmp_path / 'bad.json').write_text('{"lrr": 1}')
    with pytest.raises(SystemExit) as e: snd_train(['--print_config', '--config', str(tmp_path / 'bad.json')])
    assert e.value.code == 2

CONFIGURED = {'snd_recon': ['--steps', '7'], 'snd_train': ['--steps', '7'], 'snd_probe': ['--set', 'epochs=7'],
              'snd_demo': ['--set', 'train_steps=7'], 'snd_study': ['--set', 'train_steps=7'], 'snd_reconkd': ['--steps', '7'],
              'snd_fit3d': ['--set', 'ft_steps=7']}

@pytest.mark.parametrize('name', sorted(CONFIGURED))
def test_print_config_then_config_file(tmp_path, name):
    "Every command with a config: `--print_config` writes the JSON that `--config FILE` reads back to the same config; a bad key is one line, exit 2."
    target = commands()[name]
    code, text = run(target, ['--print_config', *CONFIGURED[name]])
    assert code in (0, None), text
    (tmp_path / 'c.json').write_text(text)
    code2, again = run(target, ['--print_config', '--config', str(tmp_path / 'c.json')])
    assert json.loads(again) == json.loads(text) and any(v == 7 for v in json.loads(text).values())
    (tmp_path / 'bad.json').write_text('{"no_such_field": 1}')
    err = io.StringIO()
    with contextlib.redirect_stderr(err): code3, _ = run(target, ['--print_config', '--config', str(tmp_path / 'bad.json')])
    assert code3 == 2 and err.getvalue().startswith(f'{name}: error:') and 'no_such_field' in err.getvalue()
