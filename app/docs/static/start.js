// Builds the Swagger UI page from the settings the server put in #swagger-config.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("swagger-config").textContent);
  config.presets = [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset];
  config.plugins = [SwaggerUIBundle.plugins.DownloadUrl, window.TabAuthorizationPlugin];
  window.onload = function () {
    var ui = SwaggerUIBundle(config);
    window.restoreTabAuthorization(ui);
    window.ui = ui;
  };
})();
