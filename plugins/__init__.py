"""The built-in backend plugins, each registered through the `embedserve.backends`
entry-point group exactly as a third-party plugin is; the core never imports them."""
