from xmodel2.cli import entry

entry()
