// Keeps Swagger UI's authorization for the life of the browser tab: across
// reloads, in this tab only (sessionStorage), never in localStorage.
// Swagger UI's own persistAuthorization offers localStorage only, which every
// tab and every later visit would share.
(function () {
  "use strict";
  var KEY = "pipeline-manager.docs.authorized";

  function save(system) {
    try {
      var authorized = system.authSelectors.authorized();
      if (authorized && authorized.size) {
        window.sessionStorage.setItem(KEY, JSON.stringify(authorized.toJS()));
      } else {
        window.sessionStorage.removeItem(KEY);
      }
    } catch (e) {
      // Storage refused (a private window's quota): the credential is not kept.
    }
  }

  window.TabAuthorizationPlugin = function (system) {
    return {
      statePlugins: {
        auth: {
          wrapActions: {
            authorize: function (original) {
              return function (payload) {
                var result = original(payload);
                save(system);
                return result;
              };
            },
            logout: function (original) {
              return function (payload) {
                var result = original(payload);
                save(system);
                return result;
              };
            },
          },
        },
      },
    };
  };

  window.restoreTabAuthorization = function (ui) {
    var saved = null;
    try {
      saved = window.sessionStorage.getItem(KEY);
    } catch (e) {
      return;
    }
    if (saved) {
      try {
        ui.authActions.restoreAuthorization({ authorized: JSON.parse(saved) });
      } catch (e) {
        window.sessionStorage.removeItem(KEY);
      }
    }
  };
})();
